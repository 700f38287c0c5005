"""The short chaos version `make test` runs: two runs of 60 s with fixed seeds, on a private
single-broker stack (deploy/stack.sh's), faults every 6 to 14 s. `make chaos` is the long one.

A failure prints each mismatch category with examples; `python -m tests.chaos --seed <seed>
--runs 1 --seconds 60 --every 6:14 --customers 200` replays a run's schedule.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.chaos.__main__ import run_chaos
from tests.chaos.run import RunConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

SEED = 10  # runs 10 and 11: between them every fault kind (tests/chaos/schedule.py)
SECONDS = 60.0


def test_two_short_chaos_runs_find_no_mismatch(
    stack_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    config = RunConfig(seconds=SECONDS, customers=200, drain_seconds=30.0)
    results = run_chaos(
        SEED, 2, SECONDS, every=(6.0, 14.0), config=config, directory=tmp_path / "chaos"
    )
    found = {
        r.seed: {category: m["count"] for category, m in r.mismatches.items()} for r in results
    }
    assert all(r.ok for r in results), f"mismatches by seed and category: {found}"
