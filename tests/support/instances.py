"""Private instances of PostgreSQL, Redis or Kafka for tests that crash, restart or flush them.

A fault test must never break the shared stack that every other test uses, so it starts its
own copy with deploy/stack.sh, in a directory and on ports of its own, and breaks that one.
The components it does not ask for are taken from the shared stack's settings.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "deploy" / "stack.sh"
_ENV_OF = {
    "postgres": "STREAMSEG_DATABASE_URL",
    "redis": "STREAMSEG_REDIS_URL",
    "kafka": "STREAMSEG_KAFKA_BOOTSTRAP",
}


def _free_port(pair: bool = False) -> int:
    """A loopback port nothing listens on (and, with `pair`, the one after it too)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not pair or port >= 65535:
            return port
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port pair found")


@dataclass
class PrivateStack:
    """Connection settings of a stack whose own components this test may break."""

    directory: Path
    env: dict[str, str]
    pg_port: int | None
    redis_port: int | None
    kafka_port: int | None

    def _run(self, command: str) -> None:
        subprocess.run(["bash", str(STACK), command], check=True, env=self._stack_env())

    def _stack_env(self) -> dict[str, str]:
        env = {**os.environ, "STREAMSEG_STACK_DIR": str(self.directory)}
        for component, name in _ENV_OF.items():
            if self._port(component) is None:
                env[name] = self.env[name]
            else:
                env.pop(name, None)
        if self.pg_port is not None:
            env["STREAMSEG_PG_PORT"] = str(self.pg_port)
        if self.redis_port is not None:
            env["STREAMSEG_REDIS_PORT"] = str(self.redis_port)
        if self.kafka_port is not None:
            env["STREAMSEG_KAFKA_PORT"] = str(self.kafka_port)
            env.setdefault("STREAMSEG_KAFKA_HEAP", "384m")
        return env

    def _port(self, component: str) -> int | None:
        return {"postgres": self.pg_port, "redis": self.redis_port, "kafka": self.kafka_port}[
            component
        ]

    def up(self) -> None:
        """Start (again) whatever of this stack is not running; waits until ready."""
        self._run("up")

    def down(self) -> None:
        self._run("down")

    # ------------------------------------------------------------ PostgreSQL faults
    def postmaster_pid(self) -> int:
        pidfile = self.directory / "postgres" / "data" / "postmaster.pid"
        return int(pidfile.read_text().split()[0])

    def backend_pids(self, application_name: str) -> list[int]:
        """Client backends of this PostgreSQL opened by `application_name`."""
        assert self.pg_port is not None, "this stack's PostgreSQL is not private"
        out = subprocess.run(
            [
                *_psql(self.pg_port),
                "-Atc",
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"  # noqa: S608
                f" AND application_name = '{application_name}'",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        return [int(p) for p in out]

    def crash_postgres_backend(self, application_name: str | None = None) -> list[int]:
        """kill -9 a backend (of `application_name`, else any client backend): the postmaster
        then kills every backend and runs crash recovery, as after a real crash. Returns the
        pids killed."""
        assert self.pg_port is not None, "this stack's PostgreSQL is not private"
        where = "backend_type = 'client backend' AND pid <> pg_backend_pid()"
        if application_name is not None:
            where += f" AND application_name = '{application_name}'"
        out = subprocess.run(
            [
                *_psql(self.pg_port),
                "-Atc",
                f"SELECT pid FROM pg_stat_activity WHERE {where}",  # noqa: S608 - test code
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        pids = [int(p) for p in out]
        for pid in pids[:1]:
            os.kill(pid, signal.SIGKILL)
        return pids[:1]

    def restart_postgres_immediately(self, down_seconds: float = 0.0) -> None:
        """`pg_ctl stop -m immediate` (no checkpoint: recovery at start), then start again."""
        assert self.pg_port is not None, "this stack's PostgreSQL is not private"
        data = self.directory / "postgres" / "data"
        subprocess.run(
            [*_as_pg_owner(), _pg_bin() + "/pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
            check=True,
            capture_output=True,
        )
        time.sleep(down_seconds)
        self.up()

    def wait_postgres_accepts(self, timeout: float = 60.0) -> None:
        assert self.pg_port is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = subprocess.run(
                [_pg_bin() + "/pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.pg_port)],
                check=False,
            )
            if ok.returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError("private PostgreSQL did not accept connections")

    # ------------------------------------------------------------ Redis and Kafka faults
    def pause(self, component: str) -> None:
        """SIGSTOP the private Redis or Kafka: it keeps its data and its connections, and
        answers nothing until `resume`."""
        self._signal(component, signal.SIGSTOP)

    def resume(self, component: str) -> None:
        self._signal(component, signal.SIGCONT)

    def _signal(self, component: str, sig: signal.Signals) -> None:
        assert self._port(component) is not None, f"this stack's {component} is not private"
        pidfile = self.directory / component / f"{component}.pid"
        os.kill(int(pidfile.read_text().split()[0]), sig)

    def flush_redis(self) -> None:
        """FLUSHALL on the private Redis: every cached document gone at once."""
        assert self.redis_port is not None, "this stack's Redis is not private"
        subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.redis_port), "FLUSHALL"],
            check=True,
            capture_output=True,
        )

    def kill(self, component: str) -> None:
        """kill -9 the private Redis or Kafka; `up()` starts it again with its data."""
        pidfile = {
            "redis": self.directory / "redis" / "redis.pid",
            "kafka": self.directory / "kafka" / "kafka.pid",
        }[component]
        assert self._port(component) is not None, f"this stack's {component} is not private"
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        pidfile.unlink(missing_ok=True)


def _pg_bin() -> str:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    return str(versions[-1])


def _as_pg_owner() -> list[str]:
    owner = os.environ.get("STREAMSEG_PG_OS_USER", "streamseg")
    return ["runuser", "-u", owner, "--"] if os.getuid() == 0 else []


def _psql(port: int) -> list[str]:
    return [
        _pg_bin() + "/psql",
        "-q",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-U",
        "postgres",
        "-d",
        "streamseg",
    ]


@contextmanager
def private_stack(
    shared_env: dict[str, str], directory: Path, *components: str
) -> Iterator[PrivateStack]:
    """Start private `components` ("postgres", "redis", "kafka"); the rest are the shared
    stack's. Everything private is stopped afterwards, whatever the test did to it.

    The instances keep their files in a directory of their own under the system's temporary
    directory, not in `directory`: every pytest session that starts on this machine (other
    worktrees share it) resets pytest's base directory to mode 0700, and a PostgreSQL that
    restarts or recovers from a crash then no longer reaches its data directory as its own
    user. Their logs are copied to `directory` at the end, and the rest is removed.
    """
    unknown = set(components) - set(_ENV_OF)
    if unknown:
        raise ValueError(f"unknown components: {sorted(unknown)}")
    own = Path(tempfile.mkdtemp(prefix="streamseg-stack-"))
    stack = PrivateStack(
        directory=own,
        env=dict(shared_env),
        pg_port=_free_port() if "postgres" in components else None,
        redis_port=_free_port() if "redis" in components else None,
        kafka_port=_free_port(pair=True) if "kafka" in components else None,
    )
    try:
        stack.up()
        env = dict(shared_env)
        if stack.pg_port is not None:
            env["STREAMSEG_DATABASE_URL"] = (
                f"postgresql+asyncpg://streamseg:streamseg@127.0.0.1:{stack.pg_port}/streamseg"
            )
        if stack.redis_port is not None:
            env["STREAMSEG_REDIS_URL"] = f"redis://127.0.0.1:{stack.redis_port}/0"
        if stack.kafka_port is not None:
            env["STREAMSEG_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{stack.kafka_port}"
        stack.env = env
        yield stack
    finally:
        try:
            stack.down()
        finally:
            # A Kafka killed and not restarted leaves nothing for `down` to stop; make sure
            # nothing of ours outlives the test.
            for pidfile in own.glob("*/*.pid"):
                with suppress(ProcessLookupError, ValueError):
                    os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
            directory.mkdir(parents=True, exist_ok=True)
            for log in own.glob("*/*.log"):
                shutil.copy2(log, directory / f"{log.parent.name}-{log.name}")
            shutil.rmtree(own, ignore_errors=True)
