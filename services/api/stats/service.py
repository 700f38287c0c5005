"""Size history answers: which stored series serves a request, and its rows as aligned
columns. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

MAX_POINTS = 5000
_STEP = re.compile(r"([1-9][0-9]{0,7})([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# Steps a request without one may get: the finest that keeps the answer within 500 points.
_DEFAULT_STEPS = (300, 900, 3600, 21600, 86400, 604800)


class StepError(ValueError):
    pass


def parse_step(text: str) -> int:
    """`300`, `300s`, `5m`, `1h`, `1d` as seconds."""
    match = _STEP.fullmatch(text)
    if match is None:
        raise StepError(f"step {text!r} is not a duration such as 300, 5m, 1h or 1d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def choose_series(
    kept: Mapping[int, datetime], since: datetime, until: datetime, step: int | None
) -> tuple[int, int] | None:
    """(stored step to read, step to answer in); None when nothing is stored.

    The answer's step must be a multiple of a stored one. Of those, the coarsest whose
    snapshots reach back to `since` is read (fewest rows); if none does, the one that
    reaches back furthest."""
    if not kept:
        return None
    span = (until - since).total_seconds()
    if step is None:
        finest = min(kept)
        step = next(
            (s for s in _DEFAULT_STEPS if s >= finest and span / s <= 500), _DEFAULT_STEPS[-1]
        )
        step = max(step, finest)
    dividing = [s for s in kept if step % s == 0]
    if not dividing:
        steps = ", ".join(f"{s}s" for s in sorted(kept))
        raise StepError(f"step {step}s is not a multiple of a stored one ({steps})")
    if span / step > MAX_POINTS:
        raise StepError(f"{span / step:.0f} points of {step}s; at most {MAX_POINTS}")
    covering = [s for s in dividing if kept[s] <= since]
    if covering:
        return max(covering), step
    return min(dividing, key=lambda s: (kept[s], -s)), step


def columns(rows: Iterable[Mapping[str, Any]]) -> tuple[list[datetime], list[dict[str, Any]]]:
    """Times, and per (dimension, segment) its sizes at those times. A snapshot lists only
    segments with customers, so a segment absent at a time had none then (0)."""
    times: dict[datetime, int] = {}
    found: dict[tuple[str, str], dict[datetime, int]] = {}
    for r in rows:
        times.setdefault(r["bucket"], 0)
        found.setdefault((r["dimension"], r["segment"]), {})[r["bucket"]] = int(r["customers"])
    ordered = sorted(times)
    series = [
        {
            "dimension": dimension,
            "segment": segment,
            "customers": [sizes.get(t, 0) for t in ordered],
        }
        for (dimension, segment), sizes in sorted(found.items())
    ]
    return ordered, series
