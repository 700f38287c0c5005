"""The lease pacer: loops take turns at low rates, and run freely through a backlog."""

from __future__ import annotations

import asyncio
import itertools

from services.segmenter.pacing import LeasePacer

INTERVAL = 0.05


async def _leases(pacer: LeasePacer, loops: int, per_loop: int, claimed: int) -> list[float]:
    """Start times of every lease `loops` concurrent loops make, each taking `claimed`."""
    stopping = asyncio.Event()
    started: list[float] = []
    loop = asyncio.get_running_loop()

    async def one() -> None:
        for _ in range(per_loop):
            async with pacer.turn(stopping) as go:
                assert go
                started.append(loop.time())
                await asyncio.sleep(0.001)  # the batch's round trips
            pacer.leased(claimed)

    await asyncio.gather(*(one() for _ in range(loops)))
    return sorted(started)


async def test_small_leases_of_several_loops_are_an_interval_apart() -> None:
    started = await _leases(LeasePacer(INTERVAL, full_batch=500), loops=3, per_loop=3, claimed=2)
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert len(started) == 9
    # The event loop's clock may run a hair early against the timeout it slept.
    assert min(gaps) >= INTERVAL * 0.9, gaps


async def test_full_batches_lease_back_to_back() -> None:
    pacer = LeasePacer(10.0, full_batch=500)
    pacer.leased(500)
    started = await _leases(pacer, loops=3, per_loop=3, claimed=500)
    assert started[-1] - started[0] < 1.0


async def test_a_backlog_that_drains_goes_back_to_turns() -> None:
    pacer = LeasePacer(INTERVAL, full_batch=500)
    pacer.leased(500)
    assert pacer.is_backlogged
    pacer.leased(499)
    assert not pacer.is_backlogged
    started = await _leases(pacer, loops=2, per_loop=2, claimed=0)
    assert min(b - a for a, b in itertools.pairwise(started)) >= INTERVAL * 0.9


async def test_stopping_ends_the_wait_for_a_turn() -> None:
    pacer = LeasePacer(60.0, full_batch=500)
    stopping = asyncio.Event()
    async with pacer.turn(stopping) as go:
        assert go  # the first lease is never held back
    loop = asyncio.get_running_loop()
    began = loop.time()

    async def wait_turn() -> bool:
        async with pacer.turn(stopping) as go:
            return go

    waiting = asyncio.create_task(wait_turn())
    await asyncio.sleep(0.05)
    stopping.set()
    assert await asyncio.wait_for(waiting, 5) is False
    assert loop.time() - began < 5
