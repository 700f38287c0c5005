"""The definitions a segmenter process evaluates under, and the population stats for them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.definitions.repository import Publish
from shared.facts import FactsPlan, plan_for
from shared.segmentation import Definitions, PopulationStats


@dataclass
class Ruleset:
    """The definitions in force, their stored version and publish policy, and the
    population stats for them. Shared by a process's loops: `switch` replaces the
    definitions in place, and each batch evaluates with a copy taken at its start."""

    definitions: Definitions
    version: int
    population: PopulationStats
    population_id: int | None
    publish: Publish = "each"
    # Whether evaluation waits for stats of the version in force (the service does; tests
    # that drive an Evaluator by hand with stats of their own do not).
    population_required: bool = False

    def adopt_population(self, latest: tuple[int, dict[str, Any]] | None) -> None:
        """Take the newest stats stored for these definitions, (id, stats), or none."""
        if latest is None:
            self.population, self.population_id = PopulationStats(), None
        else:
            stats_id, stats = latest
            self.population = PopulationStats.from_dict(self.definitions, stats)
            self.population_id = stats_id

    def switch(self, definitions: Definitions, version: int, publish: Publish) -> None:
        """Evaluate under another version from now on; its stats are to be adopted."""
        self.definitions, self.version, self.publish = definitions, version, publish
        self.population, self.population_id = PopulationStats(), None

    @property
    def is_awaiting_population(self) -> bool:
        """Stats are required and none are stored for these definitions yet: evaluating now
        would put every spender below unresolved cut-offs, and publish it."""
        return (
            self.population_required
            and self.population_id is None
            and bool(self.definitions.population_metrics)
        )

    @property
    def facts_plan(self) -> FactsPlan:
        """What to read of each customer: the definitions' event metrics, and as much of
        each window's newest events as the resolved thresholds need."""
        return plan_for(self.definitions, self.population)
