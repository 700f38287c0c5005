"""Process lifecycle: signals become a graceful stop; a second Ctrl-C exits at once."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Callable

import structlog

log = structlog.get_logger()


def install_stop_handlers(stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call `stop()`; a second signal exits hard with status 130."""
    loop = asyncio.get_running_loop()
    received = 0

    def on_signal(signum: int) -> None:
        nonlocal received
        received += 1
        if received > 1:
            log.warning("second_signal_exiting_now", signal=signal.Signals(signum).name)
            os._exit(130)
        log.info("stopping", signal=signal.Signals(signum).name)
        stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    # For an operator asking a process that seems stuck where each of its tasks waits:
    # a thread dump (py-spy) shows only the event loop, never the coroutines.
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)


def dump_tasks() -> None:
    """Log every asyncio task of this process with the stack it is waiting in."""
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=12)
        stack = [f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in frames]
        log.warning("task_dump", task=task.get_name(), frames=stack)


def settle_garbage_collector() -> None:
    """Call once start-up is done: freeze what start-up built and collect less often.

    The workers build many short-lived objects per batch (decoded events, thousands of order
    tuples for a busy customer); with the default thresholds the collector ran every few
    hundred allocations and its older passes walked every long-lived start-up object again.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
