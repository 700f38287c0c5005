"""The fault schedule: a pure function of the seed, printed at start, replayed by the seed.

Nothing here reads a clock or the environment: `make chaos SEED=n` gives run n the same
faults, at the same offsets, on the same targets, every time.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

INGEST_WORKERS = 2
SEGMENTERS = 2
# Longer than the consumer group's session timeout (10 s, shared/kafka.py), so the group
# evicts the paused worker and it wakes up a zombie.
PAUSE_SECONDS = (13.0, 20.0)

# Fault kinds and their weights. `definitions_change` and `definitions_rollback` are not
# drawn: every run activates version 2 through the API at a third of its length, and rolls
# back to version 1 at two thirds.
FAULT_WEIGHTS: dict[str, int] = {
    "kill_ingest": 3,
    "kill_segmenter": 3,
    "kill_api": 1,
    "pause_ingest": 2,
    "postgres_crash_backend": 2,
    "postgres_restart_immediate": 2,
    "kafka_broker_restart": 2,
    "redis_restart": 1,
    "redis_pause": 2,
    "redis_flush": 1,
}


@dataclass(frozen=True, slots=True)
class Fault:
    at_seconds: float
    kind: str
    target: str
    # Seconds the target stays paused or down, where that applies.
    hold_seconds: float = 0.0

    def describe(self) -> str:
        hold = f" for {self.hold_seconds:.1f}s" if self.hold_seconds else ""
        return f"t={self.at_seconds:6.1f}s {self.kind} {self.target}{hold}"


@dataclass(frozen=True, slots=True)
class Schedule:
    seed: int
    seconds: float
    brokers: int
    faults: tuple[Fault, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "seconds": self.seconds,
            "brokers": self.brokers,
            "faults": [asdict(f) for f in self.faults],
        }

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.faults:
            out[f.kind] = out.get(f.kind, 0) + 1
        return dict(sorted(out.items()))


def _target(rng: random.Random, kind: str, brokers: int) -> tuple[str, float]:
    if kind in ("kill_ingest", "pause_ingest"):
        target = f"ingest-{rng.randrange(INGEST_WORKERS)}"
        hold = rng.uniform(*PAUSE_SECONDS) if kind == "pause_ingest" else 0.0
        return target, round(hold, 1)
    if kind == "kill_segmenter":
        return f"segmenter-{rng.randrange(SEGMENTERS)}", 0.0
    if kind == "kill_api":
        return "api", 0.0
    if kind == "postgres_crash_backend":
        return rng.choice(["ingest", "segmenter", "api"]), 0.0
    if kind == "postgres_restart_immediate":
        return "postgres", round(rng.uniform(0.0, 3.0), 1)
    if kind == "kafka_broker_restart":
        return f"broker-{rng.randrange(brokers)}", round(rng.uniform(2.0, 8.0), 1)
    if kind in ("redis_restart", "redis_pause"):
        return "redis", round(rng.uniform(1.0, 5.0), 1)
    return "redis", 0.0


def make_schedule(
    seed: int,
    seconds: float,
    *,
    brokers: int = 1,
    every: tuple[float, float] = (10.0, 30.0),
    faults_on: bool = True,
) -> Schedule:
    """Faults at random moments `every` seconds apart, none in the first or last few
    seconds, and the definitions activation and rollback at a third and two thirds of the
    run. Without `faults_on`, only those: the control run that must come out clean."""
    rng = random.Random(f"chaos-schedule:{seed}")
    kinds = list(FAULT_WEIGHTS)
    weights = [FAULT_WEIGHTS[k] for k in kinds]
    faults = []
    at = rng.uniform(3.0, every[0])
    while faults_on and at < seconds - 3.0:
        kind = rng.choices(kinds, weights)[0]
        target, hold = _target(rng, kind, brokers)
        faults.append(Fault(round(at, 1), kind, target, hold))
        at += rng.uniform(*every)
    faults.append(Fault(round(seconds / 3, 1), "definitions_change", "api"))
    faults.append(Fault(round(seconds * 2 / 3, 1), "definitions_rollback", "api"))
    faults.sort(key=lambda f: f.at_seconds)
    return Schedule(seed, seconds, brokers, tuple(faults))
