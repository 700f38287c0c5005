"""`python -m tests.chaos --seed N --runs K --seconds S [--cluster 3]`: chaos runs, checked.

Run i uses seed N + i; each prints its seed and fault schedule first, and
`python -m tests.chaos --seed <that seed> --runs 1` replays its schedule. Exits 1 when any run
found a mismatch. Everything it breaks is private: its own PostgreSQL, Redis and Kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from tests.chaos.processes import kill_leftovers
from tests.chaos.run import Run, RunConfig, RunResult
from tests.chaos.schedule import make_schedule
from tests.chaos.traffic import POISON_KINDS
from tests.support.cluster import kafka_cluster
from tests.support.instances import ROOT, private_stack

_ENV_NAMES = ("STREAMSEG_DATABASE_URL", "STREAMSEG_REDIS_URL", "STREAMSEG_KAFKA_BOOTSTRAP")


def _interval(text: str) -> tuple[float, float]:
    low, _, high = text.partition(":")
    return float(low), float(high or low)


def run_chaos(
    seed: int,
    runs: int,
    seconds: float,
    *,
    brokers: int = 1,
    every: tuple[float, float] = (10.0, 30.0),
    faults_on: bool = True,
    config: RunConfig | None = None,
    directory: Path | None = None,
) -> list[RunResult]:
    """`runs` runs, seeds `seed`, `seed`+1, ...; on private instances started here."""
    directory = directory or ROOT / ".chaos"
    directory.mkdir(parents=True, exist_ok=True)
    # Components that are not private are never touched; placeholders do when none runs.
    shared = {n: os.environ.get(n, "unused") for n in _ENV_NAMES}
    components = ("postgres", "redis") if brokers > 1 else ("postgres", "redis", "kafka")
    results = []
    with contextlib.ExitStack() as resources:
        tmp = Path(resources.enter_context(tempfile.TemporaryDirectory(dir=directory)))
        stack = resources.enter_context(private_stack(shared, tmp / "stack", *components))
        cluster = resources.enter_context(kafka_cluster(tmp / "cluster")) if brokers > 1 else None
        # First on the way out: no service outlives the instances it talks to.
        resources.callback(kill_leftovers)
        for i in range(runs):
            run_seed = seed + i
            schedule = make_schedule(
                run_seed, seconds, brokers=brokers, every=every, faults_on=faults_on
            )
            run = Run(
                run_seed,
                schedule,
                config or RunConfig(seconds=seconds),
                stack,
                cluster,
                directory / f"seed-{run_seed}",
            )
            result = asyncio.run(run.execute())
            report(result)
            results.append(result)
    return results


def report(result: RunResult) -> None:
    out = sys.stdout
    out.write(f"\n=== seed {result.seed}: {'OK' if result.ok else 'MISMATCHES'} ===\n")
    out.write(f"faults done: {json.dumps(result.faults_done)}\n")
    out.write(f"counts: {json.dumps(result.counts, default=str)}\n")
    for category, found in result.mismatches.items():
        out.write(f"  {category}: {found['count']}\n")
        for example in found["examples"]:
            out.write(f"      e.g. {example}\n")
    out.write(f"details: {result.directory}/result.json\n")
    out.flush()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--cluster", type=int, default=1, choices=(1, 3), help="brokers")
    parser.add_argument("--every", type=_interval, default=(10.0, 30.0), help="LOW:HIGH s")
    parser.add_argument("--no-faults", action="store_true", help="a control run")
    parser.add_argument(
        "--exclude-poison", default="", help=f"comma-separated, of: {','.join(POISON_KINDS)}"
    )
    parser.add_argument("--customers", type=int, default=600)
    parser.add_argument("--rate", type=float, default=40.0, help="records per second")
    args = parser.parse_args()
    excluded = set(filter(None, args.exclude_poison.split(",")))
    unknown = excluded - set(POISON_KINDS)
    if unknown:
        parser.error(f"unknown poison kinds {sorted(unknown)}")
    config = RunConfig(
        seconds=args.seconds,
        customers=args.customers,
        rate_per_second=args.rate,
        poison_kinds=tuple(k for k in POISON_KINDS if k not in excluded),
    )
    # SIGTERM (a CI time-out, Ctrl-C's sibling) unwinds like Ctrl-C: services and private
    # instances are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # The harness's own producer retries through broker restarts; its client's complaints
    # about a broker that is down on purpose are noise.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    results = run_chaos(
        args.seed,
        args.runs,
        args.seconds,
        brokers=args.cluster,
        every=args.every,
        faults_on=not args.no_faults,
        config=config,
    )
    sys.stdout.write("\n=== summary ===\n")
    for r in results:
        total = sum(m["count"] for m in r.mismatches.values())
        sys.stdout.write(f"seed {r.seed}: {total} mismatches in {len(r.mismatches)} categories\n")
    sys.exit(0 if all(r.ok for r in results) else 1)


if __name__ == "__main__":
    main()
