"""The private instances that fault tests break are real, separate, and come back."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from tests.support.instances import private_stack

pytestmark = pytest.mark.timeout(180)


def _dsn(env: dict[str, str]) -> str:
    return env["STREAMSEG_DATABASE_URL"].replace("+asyncpg", "")


async def test_a_crashed_private_postgres_recovers_and_the_shared_one_is_untouched(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    shared = await asyncpg.connect(_dsn(stack_env))
    with private_stack(stack_env, tmp_path, "postgres") as stack:
        assert stack.env["STREAMSEG_DATABASE_URL"] != stack_env["STREAMSEG_DATABASE_URL"]
        conn = await asyncpg.connect(
            _dsn(stack.env), server_settings={"application_name": "victim"}
        )
        await conn.execute("CREATE TABLE t (x int)")
        await conn.execute("INSERT INTO t VALUES (1)")
        killed = stack.crash_postgres_backend("victim")
        assert len(killed) == 1
        with pytest.raises((asyncpg.PostgresConnectionError, ConnectionError, OSError)):
            await conn.fetchval("SELECT 1")
        stack.wait_postgres_accepts()
        again = await asyncpg.connect(_dsn(stack.env))
        assert await again.fetchval("SELECT count(*) FROM t") == 1
        stack.restart_postgres_immediately()
        after = await asyncpg.connect(_dsn(stack.env))
        assert await after.fetchval("SELECT count(*) FROM t") == 1
        await after.close()
        await again.close()
    assert await shared.fetchval("SELECT 1") == 1
    await shared.close()
