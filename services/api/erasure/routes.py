"""DELETE /v1/customers/{customer_id}: erase a customer's personal data on request."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter

from services.api.auth import repository as audit
from services.api.auth.repository import AuditEntry
from services.api.customers.routes import CustomerIdPath
from services.api.deps import Admin, ResourcesDep
from services.api.erasure import repository
from services.api.erasure.schemas import ErasureResult
from services.api.errors import ApiError, error_responses
from shared.segment_cache import SegmentCache

router = APIRouter(prefix="/v1/customers", tags=["erasure"])

# How long the cache refuses documents for an erased customer: longer than any evaluation
# that read the customer before the erasure takes to write its document after it.
CACHE_HOLD_SECONDS = 600


@router.delete(
    "/{customer_id}",
    response_model=ErasureResult,
    responses=error_responses(401, 403, 422, 503),
)
async def erase_customer(
    customer_id: CustomerIdPath, resources: ResourcesDep, who: Admin
) -> ErasureResult:
    """Erase everything stored about a customer (orders, interactions, aggregates, traits,
    segments, history, unpublished changes) and its cached document; the erasure is audited.
    Idempotent: erasing again finds nothing. Events that arrive later start a new record."""
    now = datetime.now(UTC)
    async with resources.db.transaction() as conn:
        erased = await repository.erase_customer(conn, customer_id)
        found = any(erased.values())
        entry = AuditEntry(
            now, who.actor, who.key_id, "customer.erase", customer_id, {"found": found}
        )
        await audit.insert_audit(conn, [entry])
    # After commit, as the segmenter writes: the database is the truth, the cache follows.
    try:
        await SegmentCache(resources.redis, resources.conn.redis_key_prefix).forget(
            customer_id, CACHE_HOLD_SECONDS
        )
    except Exception as exc:  # the rows are gone; the caller must retry for the cache
        raise ApiError(
            503,
            "cache_unavailable",
            "erased from the database, but the cached copy could not be removed: retry",
        ) from exc
    return ErasureResult(customer_id=customer_id, found=found, rows_erased=erased)
