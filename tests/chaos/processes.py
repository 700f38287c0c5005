"""The services as real processes, and the supervisor that restarts any that died.

A real deployment runs each service under a supervisor (systemd, Kubernetes) that starts it
again when it exits, whatever the reason; the harness does the same, so a kill -9 or a
crash is followed by a clean restart, and a process that keeps crashing shows up as restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Every service process started, so that an interrupted run leaves none behind.
_STARTED: list[Service] = []


def kill_leftovers() -> None:
    """kill -9 every service process still running (after an interrupted run)."""
    for service in _STARTED:
        if service.alive():
            service.kill9()


@dataclass
class Service:
    name: str
    module: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)
    paused: bool = False

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        if self not in _STARTED:
            _STARTED.append(self)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    def terminate(self, within_seconds: float = 20.0) -> None:
        """SIGTERM, and kill -9 if it has not exited within the bound."""
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(within_seconds)
        except subprocess.TimeoutExpired:
            self.kill9()


class Supervisor:
    """Restarts every service that exited, unless it is held down on purpose."""

    def __init__(self, services: list[Service]) -> None:
        self.services = {s.name: s for s in services}
        self.held: set[str] = set()
        self.restarts: dict[str, int] = dict.fromkeys(self.services, 0)

    def start_all(self) -> None:
        for s in self.services.values():
            s.start()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            self.revive()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.5)

    def revive(self) -> None:
        for name, s in self.services.items():
            if name in self.held or s.alive() or s.proc is None:
                continue
            s.exits.append(s.proc.returncode)
            self.restarts[name] += 1
            s.start()

    def stop_all(self) -> None:
        self.held.update(self.services)
        for s in self.services.values():
            s.terminate()
