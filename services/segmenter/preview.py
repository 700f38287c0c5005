"""Definitions previews: a candidate run over the whole population as a dry run, predicting
what activating it would do.

Activation's backfill evaluates every customer under the candidate, with the customer's
stored segments as `previous` (state machines read them) and the candidate's population
stats. A preview does the same at `as_of`, the segmenter's clock when the job starts, and
writes nothing but the job's progress and result:

- Stats: when the candidate's population spec equals the base version's, activation copies
  the base version's newest stats, and so they are taken here. Otherwise a first pass
  computes them from the population at `as_of` with population.recompute's functions;
  activation would compute its own at its own time, equal to these under a pinned clock.
- Segments: a second pass in customer-id chunks, each chunk read in one snapshot.
- Reasons: samples carry the candidate's decision reason. Activation's history prefixes it
  with its cause ("new segment definitions; "), and an exit from a removed dimension names
  the version it becomes (transitions.removed_reason).

One job at a time per process, claimed with SKIP LOCKED. Each chunk's progress is the job's
heartbeat; a job whose heartbeat is older than `stale_seconds` (its process died or
stopped) is taken over by the next runner that polls. A job cancelled or taken over stops
at its next progress write, and is left as it is.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmenter import definitions
from services.segmenter import repository as repo
from services.segmenter.transitions import Transitions
from services.segmenter.worker import YIELD_EVERY_CUSTOMERS
from shared.clock import Clock, is_running
from shared.db.engine import pg_connection
from shared.definitions import repository as store
from shared.facts import FactsPlan, plan_for
from shared.retry import Backoff, Retry, is_retriable, repeat_until_stopped, retrying
from shared.segmentation import (
    Assignment,
    CustomerFacts,
    Definitions,
    MetricValue,
    PopulationStats,
    UncoveredCustomerError,
    compute_population_stats,
    evaluate,
    population_sample,
)
from shared.segmentation.changes import population_spec

log = structlog.get_logger("segmenter.preview")

T = TypeVar("T")

CHUNK = 2000
STALE_SECONDS = 30.0
SWEEP_EXPIRED_SECONDS = 60.0
READ_ATTEMPTS = 6
BACKOFF = Backoff(0.2, 5.0)


class PreviewStoppedError(Exception):
    """The job was cancelled, taken over by another runner, or the process is stopping."""


@dataclass(frozen=True, slots=True)
class _Chunk:
    ids: list[str]
    loaded: dict[str, CustomerFacts]
    current: dict[str, dict[str, Assignment]]


class PreviewRunner:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        *,
        poll_seconds: float = 1.0,
        stale_seconds: float = STALE_SECONDS,
        chunk: int = CHUNK,
        worker: str | None = None,
        zone: tzinfo = UTC,
    ) -> None:
        self._engine = engine
        self._zone = zone  # where birthdays begin (STREAMSEG_BIRTHDAY_TIME_ZONE)
        self._clock = clock
        self._poll_seconds = poll_seconds
        self._stale_seconds = stale_seconds
        self._chunk = chunk
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    async def run(self, stopping: asyncio.Event) -> None:
        """Run jobs one after another until stopped; sweep expired ones now and then."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()

        async def step() -> None:
            nonlocal next_sweep
            if loop.time() >= next_sweep:
                async with pg_connection(self._engine) as conn:
                    deleted = await store.delete_expired_previews(conn)
                if deleted:
                    log.info("previews_expired", deleted=deleted)
                next_sweep = loop.time() + SWEEP_EXPIRED_SECONDS
            while not stopping.is_set() and await self.run_once(stopping):
                pass

        await repeat_until_stopped(
            step, self._poll_seconds, stopping, Retry(BACKOFF, "preview", stopping)
        )

    async def run_once(self, stopping: asyncio.Event | None = None) -> bool:
        """Claim one job and run it to its end; False when there was none to claim.

        A retriable error that outlasts the retries is raised with the job left running:
        its heartbeat goes stale, and the next claim (here or elsewhere) starts it again."""
        if not is_running(self._clock):
            return False
        async with pg_connection(self._engine) as conn, conn.transaction():
            job = await store.claim_preview(conn, self.worker, self._stale_seconds)
        if job is None:
            return False
        stopping = stopping or asyncio.Event()
        as_of = self._clock.now()
        started = time.perf_counter()
        log.info("preview_started", preview_id=job.id, base_version=job.base_version)
        try:
            result = await self._result(job, as_of, stopping)
        except PreviewStoppedError as exc:
            log.info("preview_stopped", preview_id=job.id, why=str(exc))
            return True
        except Exception as exc:
            if is_retriable(exc):
                raise
            # A job's content came from a user. Whatever goes wrong with it fails that job
            # only: raised, it would stop this process, and then every process that took the
            # job over after it, live evaluation with them.
            error = f"{type(exc).__name__}: {exc}"
            log.error("preview_failed", preview_id=job.id, error=error, exc_info=exc)
            await self._finish(job, None, error, stopping)
            return True
        if await self._finish(job, result, None, stopping):
            log.info(
                "preview_finished",
                preview_id=job.id,
                customers=result["customers"],
                uncovered=result["uncovered"],
                population_reused=result["population"]["reused"],
                seconds=round(time.perf_counter() - started, 3),
            )
        else:
            log.info("preview_stopped", preview_id=job.id, why="cancelled or taken over")
        return True

    async def _result(
        self, job: store.Preview, as_of: datetime, stopping: asyncio.Event
    ) -> dict[str, Any]:
        candidate = definitions.parse(job.content)
        base_version = await self._on_connection(
            functools.partial(store.get_version, version=job.base_version), stopping
        )
        if base_version is None:
            raise LookupError(f"base version {job.base_version} is not stored")
        base = definitions.parse(base_version.content)
        total = await self._on_connection(store.customer_count, stopping)
        await self._progress(job, 0, total, as_of, stopping)
        population, reused = await self._population(job, base, candidate, as_of, total, stopping)
        transitions = Transitions(base, candidate, job.samples)
        async for chunk in self._walk(as_of, plan_for(candidate, heads=False), True, stopping):
            for i, cid in enumerate(chunk.ids, 1):
                loaded = chunk.loaded.get(cid)
                if loaded is None:
                    continue
                current = chunk.current.get(cid, {})
                try:
                    result = evaluate(
                        candidate,
                        loaded,
                        as_of,
                        current,
                        population,
                        find_next_change=False,
                        zone=self._zone,
                    )
                except UncoveredCustomerError:
                    result = None
                transitions.add(cid, current, result)
                if i % YIELD_EVERY_CUSTOMERS == 0:
                    # As the evaluator does: live evaluation's round trips complete meanwhile.
                    await asyncio.sleep(0)
            await self._progress(job, transitions.customers, total, as_of, stopping)
        return {
            "as_of": as_of.isoformat(),
            "base_version": job.base_version,
            "customers": transitions.customers,
            "population": {**population.to_dict(), "reused": reused},
            "dimensions": transitions.dimensions(),
            "audiences": transitions.audiences(),
            "uncovered": transitions.uncovered,
        }

    async def _population(
        self,
        job: store.Preview,
        base: Definitions,
        candidate: Definitions,
        as_of: datetime,
        total: int,
        stopping: asyncio.Event,
    ) -> tuple[PopulationStats, bool]:
        """The stats activation would evaluate under, and whether they are the base's."""
        if population_spec(candidate) == population_spec(base):
            latest = await self._on_connection(
                functools.partial(
                    repo.latest_population_stats, definition_version=job.base_version
                ),
                stopping,
            )
            if latest is not None:
                return PopulationStats.from_dict(candidate, latest[1]), True
        if not candidate.population_metrics:
            return PopulationStats(), False
        # Columns, not a sample per customer as recompute keeps: a fraction of the memory.
        columns: dict[str, list[MetricValue]] = {m: [] for m in candidate.population_metrics}
        plan = plan_for(candidate, heads=False, only=candidate.population_metrics)
        async for chunk in self._walk(as_of, plan, False, stopping):
            for i, cid in enumerate(chunk.ids, 1):
                loaded = chunk.loaded.get(cid)
                if loaded is not None:
                    for metric, value in population_sample(
                        candidate, loaded, as_of, zone=self._zone
                    ).items():
                        columns[metric].append(value)
                if i % YIELD_EVERY_CUSTOMERS == 0:
                    await asyncio.sleep(0)
            await self._progress(job, 0, total, as_of, stopping)
        return compute_population_stats(candidate, columns), False

    async def _walk(
        self, as_of: datetime, plan: FactsPlan, with_current: bool, stopping: asyncio.Event
    ) -> AsyncIterator[_Chunk]:
        """The population in customer-id chunks, each read in one snapshot."""
        after = ""
        while True:
            read = functools.partial(
                _read_chunk,
                after=after,
                limit=self._chunk,
                as_of=as_of,
                plan=plan,
                with_current=with_current,
            )
            chunk = await self._on_connection(read, stopping)
            if not chunk.ids:
                return
            yield chunk
            after = chunk.ids[-1]

    async def _progress(
        self, job: store.Preview, done: int, total: int, as_of: datetime, stopping: asyncio.Event
    ) -> None:
        if stopping.is_set():
            raise PreviewStoppedError("the process is stopping")
        progress = functools.partial(
            store.preview_progress,
            preview_id=job.id,
            worker=self.worker,
            done=done,
            total=total,
            as_of=as_of,
        )
        if not await self._on_connection(progress, stopping):
            raise PreviewStoppedError("cancelled or taken over")

    async def _finish(
        self,
        job: store.Preview,
        result: dict[str, Any] | None,
        error: str | None,
        stopping: asyncio.Event,
    ) -> bool:
        finish = functools.partial(
            store.finish_preview, preview_id=job.id, worker=self.worker, result=result, error=error
        )
        return await self._on_connection(finish, stopping)

    async def _on_connection(
        self, operation: Callable[[Any], Awaitable[T]], stopping: asyncio.Event
    ) -> T:
        """`operation(conn)` on a pooled connection, tried again after retriable errors."""

        async def attempt() -> T:
            async with pg_connection(self._engine) as conn:
                return await operation(conn)

        return await retrying(
            attempt, BACKOFF, "preview", attempts=READ_ATTEMPTS, stopping=stopping
        )


async def _read_chunk(
    conn: Any,
    *,
    after: str,
    limit: int,
    as_of: datetime,
    plan: FactsPlan,
    with_current: bool,
) -> _Chunk:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        ids = await repo.customer_ids_after(conn, after, limit)
        if not ids:
            return _Chunk(ids, {}, {})
        loaded = await repo.load_customers(conn, ids, as_of, plan)
        current = await repo.current_assignments(conn, ids) if with_current else {}
    return _Chunk(ids, loaded, current)
