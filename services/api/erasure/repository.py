"""All SQL of erasure: every row that names the customer, in the caller's unit of work."""

from __future__ import annotations

import asyncpg

from shared.db.leases import customer_lease_key

# Every table with a customer's personal data. The audit log is not among them: it records
# who read or erased whose data, which is what an audit trail is kept for. In the order an
# ingest batch locks them (aggregates, traits, queue), so the two never wait on each other
# in a cycle.
ERASED_TABLES = (
    "orders",
    "interactions",
    "customer_aggregates",
    "customer_traits",
    "segmentation_queue",
    "customer_evaluations",
    "customer_segments",
    "segment_history",
    "segment_outbox",
    "cache_repairs",
    "fact_changes",
    "metric_contributions",
    "customer_metrics",
    "import_customers",
)


async def erase_customer(conn: asyncpg.Connection, customer_id: str) -> dict[str, int]:
    """Delete the customer's rows from every table; returns how many went from each.

    First it takes the lease a segmenter holds while it evaluates the customer (the lock of
    shared/db/leases.py), until this transaction ends: an evaluation in flight finishes
    before the rows go, and none starts until they are gone, so no evaluation can write the
    customer back from facts it read before.
    """
    await conn.execute(f"SELECT pg_advisory_xact_lock({customer_lease_key('$1')})", customer_id)
    # The sizes the customer counted in leave with it (size history, migration 0011).
    await conn.execute(
        """
        INSERT INTO segment_size_deltas (dimension, segment, customers)
        SELECT dimension, segment, -1 FROM customer_segments WHERE customer_id = $1
        """,
        customer_id,
    )
    erased = {}
    for table in ERASED_TABLES:
        status = await conn.execute(
            f"DELETE FROM {table} WHERE customer_id = $1",  # noqa: S608 - a constant
            customer_id,
        )
        erased[table] = int(status.split()[-1])
    return erased
