"""CPU of ingest and the segmenter at a low, steady event rate, and with no traffic at all.

    .venv/bin/python -m bench.bench_low_rate [--rate 50] [--seconds 60] [--idle 30]
        [--profile DIR] [--json out.json]

Runs one ingest and one segmenter process on a schema and topics of their own (as
`bench_segmenter` does), then:
1. `python -m services.loadgen --duration 0` sends `make run`'s history of past shoppers
   (2,000 customers, 6,000 events over 400 days) and the benchmark waits until it is
   ingested, evaluated and settled (nothing due, population stats computed);
2. `--idle` seconds with no traffic: what the processes' own loops cost;
3. `make run`'s live stream: loadgen again, with `--rate` (its history first again, all
   duplicates that ingest drops), `--warmup` seconds, then `--seconds` measured; the window
   also counts the evaluations and the population recomputes in it.

For each window it prints each process's CPU (utime + stime from /proc/<pid>/stat) as a
share of one core, and the CPU of the PostgreSQL backends serving each process (found by
their client ports). With `--profile DIR` the services run under cProfile timed by process
CPU (`bench/cpu_profile.py`) and write DIR/ingest.prof and DIR/segmenter.prof when stopped
(the figures are then inflated by the profiler: run it apart from the measured runs).

Needs the stack (`bash deploy/stack.sh up`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text

from bench.bench_ingest import cpu_seconds, stack_env
from bench.bench_segmenter import PrivateStack, stop_services

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("ingest", "segmenter")


def start(service_env: dict[str, str], name: str, profile: Path | None) -> subprocess.Popen[bytes]:
    command = [sys.executable]
    if profile is not None:
        command += ["-m", "bench.cpu_profile", str(profile / f"{name}.prof"), f"services.{name}"]
    else:
        command += ["-m", f"services.{name}"]
    logs = ROOT / ".stack"
    logs.mkdir(exist_ok=True)
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=service_env,
        stdout=(logs / f"bench-low-{name}.log").open("wb"),
        stderr=subprocess.STDOUT,
    )


def local_ports(pid: int) -> set[int]:
    """The local TCP ports of a process's sockets (Linux: its fds against /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def backends(engine: Any, pid: int) -> list[int]:
    """The PostgreSQL backends whose clients are this process's sockets."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE client_port = ANY(:ports)"),
            {"ports": sorted(local_ports(pid))},
        )
        return [int(r[0]) for r in rows]


class Meter:
    """CPU seconds of the services and of their backends over one window."""

    def __init__(self, procs: dict[str, subprocess.Popen[bytes]], engine: Any) -> None:
        self.procs = procs
        self.engine = engine

    async def read(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at": time.perf_counter()}
        for name, proc in self.procs.items():
            pids = await backends(self.engine, proc.pid)
            out[name] = cpu_seconds(proc.pid)
            out[f"{name}_pg"] = {pid: _cpu_or_zero(pid) for pid in pids}
        return out

    @staticmethod
    def shares(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        seconds = after["at"] - before["at"]
        out: dict[str, Any] = {"seconds": round(seconds, 1)}
        for name in NAMES:
            out[f"{name}_pct_core"] = round(100 * (after[name] - before[name]) / seconds, 2)
            # A backend that appeared during the window counts from zero: from its start.
            pg = sum(
                cpu - before[f"{name}_pg"].get(pid, 0.0) for pid, cpu in after[f"{name}_pg"].items()
            )
            out[f"{name}_pg_pct_core"] = round(100 * pg / seconds, 2)
        out["both_pct_core"] = round(sum(out[f"{n}_pct_core"] for n in NAMES), 2)
        return out


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except FileNotFoundError:
        return 0.0


async def settled(engine: Any, deadline_s: float) -> float:
    """Seconds until the customers stop growing (ingest is done), nothing is due and the
    population stats exist, polled each second."""
    started = time.perf_counter()
    seen = -1
    while time.perf_counter() - started < deadline_s:
        async with engine.connect() as conn:
            due, stats, aggregates = (
                await conn.execute(
                    text(
                        "SELECT (SELECT count(*) FROM segmentation_queue WHERE due_at <= now()),"
                        " (SELECT count(*) FROM population_stats),"
                        " (SELECT count(*) FROM customer_aggregates)"
                    )
                )
            ).one()
        if aggregates == seen and due == 0 and stats > 0:
            return time.perf_counter() - started
        seen = aggregates
        await asyncio.sleep(1)
    raise RuntimeError(f"not settled after {deadline_s} s")


async def tallies(engine: Any) -> dict[str, int]:
    """Evaluations so far, and population stats computed so far."""
    async with engine.connect() as conn:
        evaluations, stats = (
            await conn.execute(
                text(
                    "SELECT (SELECT COALESCE(sum(version), 0) FROM customer_evaluations),"
                    " (SELECT count(*) FROM population_stats)"
                )
            )
        ).one()
    return {"evaluations": int(evaluations), "population_recomputes": int(stats)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = stack_env()
    stack = PrivateStack.new()
    engine = await stack.create(env)
    service_env = stack.service_env(env)
    procs = {name: start(service_env, name, args.profile) for name in NAMES}
    figures: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "rate": args.rate,
        "load_before": os.getloadavg()[0],
    }
    try:
        await asyncio.sleep(3)
        loadgen = [sys.executable, "-m", "services.loadgen", "--seed", "1"]
        loadgen += ["--customers", str(args.customers)]
        subprocess.run(  # noqa: ASYNC221 - the services run in their own processes
            [*loadgen, "--duration", "0"],
            cwd=ROOT,
            env=service_env,
            capture_output=True,
            check=True,
        )
        figures["history_settled_s"] = round(await settled(engine, 300), 1)
        await asyncio.sleep(args.settle)
        meter = Meter(procs, engine)
        before = await meter.read()
        await asyncio.sleep(args.idle)
        figures["idle"] = Meter.shares(before, await meter.read())
        print("idle", figures["idle"], flush=True)
        # The live stream of `make run`: loadgen sends the same history again first (its
        # events are duplicates, dropped by ingest), then live events at `--rate`.
        live = await asyncio.create_subprocess_exec(
            *loadgen,
            "--rate",
            str(args.rate),
            "--duration",
            str(args.warmup + args.seconds + 2),
            cwd=ROOT,
            env=service_env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.sleep(args.warmup)
        first, counts = await meter.read(), await tallies(engine)
        await asyncio.sleep(args.seconds)
        window = Meter.shares(first, await meter.read())
        after = await tallies(engine)
        window.update({k: after[k] - counts[k] for k in counts})
        await live.wait()
        figures["live"] = window
        figures["load_after"] = os.getloadavg()[0]
        print("live", window, flush=True)
    finally:
        stop_services(list(procs.values()))
        await stack.drop(env, engine)
    return figures


def print_profile(path: Path, top: int = 25) -> None:
    """The functions that took the most time of their own, and asyncpg's round trips."""
    stats = pstats.Stats(str(path))
    print(f"== {path}")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(r"asyncpg.*(connection|prepared_stmt)\.py", 12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--idle", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=15)
    parser.add_argument("--settle", type=float, default=5, help="seconds after the history")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    figures = asyncio.run(run(args))
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    if args.profile:
        for name in NAMES:
            print_profile(args.profile / f"{name}.prof")
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
