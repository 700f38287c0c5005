"""The nemesis: carries out the schedule's faults, at their moments, on private instances only.

Faults run one after another; a fault whose moment comes while the previous one still
holds (a pause, a broker down) starts when that one ends, and its actual time is logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tests.chaos.processes import Supervisor
from tests.chaos.schedule import Fault, Schedule
from tests.support.cluster import KafkaCluster
from tests.support.instances import PrivateStack


@dataclass
class Done:
    fault: Fault
    started_seconds: float
    took_seconds: float
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.fault.kind,
            "target": self.fault.target,
            "planned_at": self.fault.at_seconds,
            "started_at": round(self.started_seconds, 1),
            "took": round(self.took_seconds, 1),
            "note": self.note,
        }


@dataclass
class Nemesis:
    schedule: Schedule
    stack: PrivateStack
    cluster: KafkaCluster | None
    supervisor: Supervisor
    change_definitions: Callable[[], Awaitable[None]]
    rollback_definitions: Callable[[], Awaitable[None]]
    log: Callable[[str], None]
    done: list[Done] = field(default_factory=list)
    _background: list[asyncio.Task[None]] = field(default_factory=list)

    async def _wake(self, target: str, after_seconds: float) -> None:
        await asyncio.sleep(after_seconds)
        self.supervisor.services[target].resume()

    async def settle(self) -> None:
        """Wake every paused process now: the faults are over."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for s in self.supervisor.services.values():
            if s.paused:
                s.resume()

    async def run(self, started: float, stopping: asyncio.Event) -> None:
        for fault in self.schedule.faults:
            wait = started + fault.at_seconds - time.monotonic()
            if wait > 0:
                try:
                    await asyncio.wait_for(stopping.wait(), wait)
                    return
                except TimeoutError:
                    pass
            if stopping.is_set():
                return
            began = time.monotonic()
            try:
                note = await self.apply(fault)
            except Exception as exc:
                note = f"failed: {exc!r}"
            entry = Done(fault, began - started, time.monotonic() - began, note)
            self.done.append(entry)
            self.log(f"fault {fault.describe()} started t={entry.started_seconds:.1f}s {note}")

    async def apply(self, fault: Fault) -> str:
        kind, target = fault.kind, fault.target
        services = self.supervisor.services
        if kind in ("kill_ingest", "kill_segmenter", "kill_api"):
            proc = services[target].proc
            services[target].kill9()
            pid = None if proc is None else proc.pid
            return f"pid {pid}"
        if kind == "pause_ingest":
            # The zombie sleeps on in the background; the next faults do not wait for it.
            services[target].pause()
            self._background.append(asyncio.create_task(self._wake(target, fault.hold_seconds)))
            return ""

        if kind == "postgres_crash_backend":
            pids = await asyncio.to_thread(self.stack.crash_postgres_backend, target)
            if not pids:
                pids = await asyncio.to_thread(self.stack.crash_postgres_backend, None)
            await asyncio.to_thread(self.stack.wait_postgres_accepts)
            return f"backend {pids}"
        if kind == "postgres_restart_immediate":
            await asyncio.to_thread(self.stack.restart_postgres_immediately, fault.hold_seconds)
            return ""
        if kind == "kafka_broker_restart":
            index = int(target.rsplit("-", 1)[1])
            if self.cluster is None:
                await asyncio.to_thread(self.stack.kill, "kafka")
                await asyncio.sleep(fault.hold_seconds)
                await asyncio.to_thread(self.stack.up)
            else:
                self.cluster.kill(index)
                await asyncio.sleep(fault.hold_seconds)
                self.cluster.start(index)
                await asyncio.to_thread(self.cluster.wait_ready, index)
            return ""
        if kind == "redis_restart":
            await asyncio.to_thread(self.stack.kill, "redis")
            await asyncio.sleep(fault.hold_seconds)
            await asyncio.to_thread(self.stack.up)
            return ""
        if kind == "redis_pause":
            # Redis keeps its documents but answers nothing: the segmenter's writes after
            # commit fail while the old documents stay readable once it is back.
            self.stack.pause("redis")
            try:
                await asyncio.sleep(fault.hold_seconds)
            finally:
                self.stack.resume("redis")
            return ""
        if kind == "redis_flush":
            await asyncio.to_thread(self.stack.flush_redis)
            return ""
        if kind == "definitions_change":
            await self.change_definitions()
            return ""
        if kind == "definitions_rollback":
            await self.rollback_definitions()
            return ""
        raise ValueError(f"unknown fault kind {kind}")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.done:
            out[d.fault.kind] = out.get(d.fault.kind, 0) + 1
        return dict(sorted(out.items()))
