"""vegeta, a constant-rate HTTP load tool in Go, as a load generator for the benchmarks.

Installed on first use into `.bench-tools/` (ignored by git) with `go install`, so it needs a
Go toolchain once. A run gives each request's send time and latency; from them this module
times every request from when it was due, as the Python generator does.
"""

from __future__ import annotations

import csv
import os
import random
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".bench-tools"
MODULE, VERSION = "github.com/tsenart/vegeta/v12", "v12.12.0"
# More workers (one connection each) only when all are busy: 1,000 rides out a 1 s stall at
# 1,000/s; beyond that sends wait, and that wait still counts since latency runs from due time.
MAX_WORKERS = 1000
LATE_SECONDS = 0.005


@dataclass
class Attack:
    sent: int
    latencies: list[float]  # seconds from due time to answer, answered requests only
    from_send: list[float]  # seconds from send to answer, the same requests
    errors: int  # no answer, or a status other than 200
    late_sends: int  # sent more than LATE_SECONDS after due
    elapsed: float  # seconds from the first due time to the last send
    cpu_seconds: float  # vegeta's own, start-up included


def installed() -> Path:
    """The vegeta binary, installed with `go install` if it is not there yet."""
    binary = TOOLS / "vegeta"
    if not binary.exists():
        go = shutil.which("go") or "/usr/local/go/bin/go"
        if not Path(go).exists():
            raise SystemExit(f"vegeta needs Go once, to install {MODULE}@{VERSION}")
        subprocess.run(
            [go, "install", f"{MODULE}@{VERSION}"],
            env=os.environ | {"GOBIN": str(TOOLS)},
            check=True,
        )
    return binary


def write_targets(path: Path, url: str, key: str, ids: list[str], count: int) -> None:
    """`count` requests for customers drawn at random, in vegeta's http format."""
    with path.open("w") as out:
        for cid in random.choices(ids, k=count):
            out.write(f"GET {url}/v1/customers/{cid}/segments\nAuthorization: Bearer {key}\n\n")


def attack(binary: Path, targets: Path, rate: float, duration: float) -> Attack:
    results = targets.with_suffix(".bin")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [
            binary,
            "attack",
            "-format=http",
            f"-targets={targets}",
            f"-rate={round(rate)}/1s",
            f"-duration={duration}s",
            f"-max-workers={MAX_WORKERS}",
            "-max-body=0",  # bodies are read but not kept
            f"-output={results}",
        ],
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    rows = subprocess.run(
        [binary, "encode", "-to=csv", str(results)], check=True, capture_output=True, text=True
    ).stdout
    results.unlink()
    # timestamp (send, ns), status (0: no answer), latency (ns), ...; in send order
    sends = [(int(r[0]), int(r[1]), int(r[2])) for r in csv.reader(rows.splitlines())]
    sends.sort()
    # The pacer releases request k no earlier than k / rate after the start, so the earliest
    # of (send k - k / rate) is the start, and k / rate after it request k was due.
    step = 1e9 / rate
    start = min(sent - k * step for k, (sent, _, _) in enumerate(sends))
    latencies, from_send, errors, late = [], [], 0, 0
    for k, (sent, status, latency) in enumerate(sends):
        due = start + k * step
        late += sent - due > LATE_SECONDS * 1e9
        if status:
            latencies.append((sent - due + latency) / 1e9)
            from_send.append(latency / 1e9)
        errors += status != 200
    return Attack(
        sent=len(sends),
        latencies=latencies,
        from_send=from_send,
        errors=errors,
        late_sends=late,
        elapsed=(sends[-1][0] - start) / 1e9 if sends else 0,
        cpu_seconds=cpu,
    )
