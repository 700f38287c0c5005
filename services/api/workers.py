"""Several API processes on one listening socket, so that the API can use more than one core.

The parent binds the socket and spawns `count` workers (fresh interpreters that inherit only
the socket and the environment), each running the single-process server of __main__.py, whose
stop signal ends open change streams first. The parent restarts nothing: when a worker exits,
it stops the others and exits with that worker's status, so that the service's supervisor
(Docker, systemd) restarts it whole, as it would a single process. SIGTERM and SIGINT are
passed on to the workers.

Metrics use prometheus_client's multiprocess mode: each worker writes its figures to files in
a directory the parent makes (and removes at the end), and /metrics, whichever worker answers
it, adds up all of them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from types import FrameType

import structlog

log = structlog.get_logger("api")

METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def serve_workers(
    count: int, sock: socket.socket, worker: Callable[[socket.socket, int], None]
) -> int:
    """Run `worker(sock)` in `count` processes until one exits or a stop signal comes; returns
    the exit status for this process."""
    with tempfile.TemporaryDirectory(prefix="streamseg-api-metrics-") as metrics_dir:
        # prometheus_client reads it when a worker imports it, so it is set before they start.
        os.environ[METRICS_DIR] = metrics_dir
        spawn = multiprocessing.get_context("spawn")
        procs = [
            spawn.Process(target=worker, args=(sock, os.getpid()), name=f"api-worker-{i}")
            for i in range(count)
        ]
        is_asked_to_stop = False

        def stop(sig: int, frame: FrameType | None) -> None:
            nonlocal is_asked_to_stop
            is_asked_to_stop = True
            _terminate(procs)

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for proc in procs:
                proc.start()
            if is_asked_to_stop:
                _terminate(procs)  # the signal came while they were starting
            log.info("api_workers_started", pids=[p.pid for p in procs])
            wait([p.sentinel for p in procs])  # the first to exit, asked to or not
            is_failed = not is_asked_to_stop
            if is_failed:
                first = next(p for p in procs if p.exitcode is not None)
                log.error("api_worker_exited", pid=first.pid, exitcode=first.exitcode)
                _terminate(procs)
            for proc in procs:
                proc.join()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    codes = [p.exitcode or 0 for p in procs]
    # uvicorn ends a graceful stop by raising the signal again: -SIGTERM is a clean exit.
    if not is_failed and all(c in (0, -signal.SIGTERM) for c in codes):
        return 0
    return next((c for c in codes if c > 0), 1)


def _terminate(procs: Sequence[multiprocessing.process.BaseProcess]) -> None:
    # SIGTERM whatever the signal: a Ctrl-C has reached the workers already (they share the
    # terminal's process group), and a second SIGINT would make them skip a graceful stop.
    for proc in procs:
        if proc.pid is not None and proc.exitcode is None:
            os.kill(proc.pid, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def exit_with_parent(parent_pid: int) -> None:
    """Have the kernel send this worker SIGTERM when its parent dies.

    A parent killed with SIGKILL (the OOM killer, a supervisor out of patience) cannot stop
    its workers; without this they would go on serving the port, unsupervised, with no
    parent to restart or stop them. Linux only; elsewhere workers outlive a killed parent.
    """
    libc_name = ctypes.util.find_library("c")
    if libc_name is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("api_worker_parent_watch_failed", errno=ctypes.get_errno())
        return
    if os.getppid() != parent_pid:  # the parent died before the watch was set
        os.kill(os.getpid(), signal.SIGTERM)
