"""Property-based requests generated from the OpenAPI document (schemathesis): whatever the
input, valid or not, no endpoint answers with a server error.

The API runs as a uvicorn process against seeded data; the change stream is left out because
it never ends (test_api_stream.py covers it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from redis.asyncio import Redis
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.settings import ConnectionSettings
from tests.integration.test_api_support import (
    Change,
    Customer,
    api_process,
    bearer,
    make_key,
    seed_cache,
    seed_database,
    seed_definitions,
    seed_history,
)

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 30


@pytest.fixture
async def target(
    engine: AsyncEngine, redis: Redis, settings: ConnectionSettings, service_env: dict[str, str]
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    now = datetime.now(UTC)
    customers = [Customer(f"c-{i}", now - timedelta(minutes=i)) for i in range(5)]
    await seed_definitions(engine)
    await seed_database(engine, customers)
    await seed_cache(redis, settings.redis_key_prefix, customers[:3])
    await seed_history(
        engine, [Change(c.customer_id, "lifecycle", None, "new", now) for c in customers]
    )
    key = await make_key(engine, "segments:read", "definitions:read", "definitions:write", "admin")
    async with api_process(service_env) as api:
        yield api.url, bearer(key)


def test_no_input_makes_a_server_error(target: tuple[str, dict[str, str]]) -> None:
    url, headers = target
    document = httpx.get(f"{url}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document).exclude(path="/v1/changes/stream")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert len(operations) >= 21, [op.label for op in operations]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def no_server_error(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(
                base_url=url, headers=headers, checks=[not_a_server_error], timeout=10
            )

        no_server_error()
