"""Ingest: offsets with fencing epochs, dedup ledger, orders, interactions, aggregates, work queue.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copy of the interaction types of event schema v1: a migration must not change
# when the code does. A new type needs a new migration.
INTERACTION_TYPES = (
    "add_to_cart",
    "email_click",
    "email_open",
    "login",
    "page_view",
    "product_view",
    "review",
    "search",
    "support_ticket",
)


def upgrade() -> None:
    # Consumed offsets live beside the aggregates so that both commit in one transaction.
    # owner_epoch fences a worker that lost its partition: each new owner bumps it, and a
    # batch commits only while the epoch it read is still current.
    op.execute("""
        CREATE TABLE ingest_offsets (
            topic text NOT NULL,
            partition integer NOT NULL,
            next_offset bigint NOT NULL DEFAULT 0,
            -- Latest event time seen on the partition: the watermark of the event-time clock.
            max_event_at timestamptz,
            owner_epoch bigint NOT NULL DEFAULT 0,
            owner text,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (topic, partition)
        )
    """)
    op.execute("""
        CREATE TABLE processed_events (
            event_id text PRIMARY KEY,
            seen_at timestamptz NOT NULL
        )
    """)
    # Rows arrive in seen_at order, so a BRIN index finds expired ones for pruning at almost
    # no cost per insert, where a btree would double the work of the hot dedup insert.
    op.execute("CREATE INDEX processed_events_seen_at ON processed_events USING brin (seen_at)")
    # One row per order; placement, refunds and cancellation each fill their own columns,
    # so the result does not depend on the order in which the events arrive.
    op.execute("""
        CREATE TABLE orders (
            customer_id text NOT NULL,
            order_id text NOT NULL,
            placed_at timestamptz,
            amount numeric(20, 4),
            refunded numeric(20, 4) NOT NULL DEFAULT 0,
            cancelled_at timestamptz,
            channel text,
            PRIMARY KEY (customer_id, order_id)
        )
    """)
    # No index on (customer_id, placed_at): the primary key's customer_id prefix finds a
    # customer's few orders, and one index less makes the hot upsert cheaper.
    op.execute("""
        CREATE TABLE interactions (
            customer_id text NOT NULL,
            occurred_at timestamptz NOT NULL,
            type text NOT NULL
        )
    """)
    op.execute("CREATE INDEX interactions_customer_time ON interactions (customer_id, occurred_at)")
    op.execute("CREATE INDEX interactions_time ON interactions USING brin (occurred_at)")
    op.execute(
        """
        CREATE TABLE customer_aggregates (
            customer_id text PRIMARY KEY,
            order_count integer NOT NULL DEFAULT 0,
            net_spend numeric(20, 4) NOT NULL DEFAULT 0,
            first_order_at timestamptz,
            last_order_at timestamptz,
            interaction_count bigint NOT NULL DEFAULT 0,
            {per_type_counts},
            last_interaction_at timestamptz,
            last_add_to_cart_at timestamptz,
            last_event_at timestamptz,
            version bigint NOT NULL DEFAULT 1,
            updated_at timestamptz NOT NULL DEFAULT now()
        ) WITH (fillfactor = 70)
    """.format(
            per_type_counts=",\n            ".join(
                f"{t}_count bigint NOT NULL DEFAULT 0" for t in INTERACTION_TYPES
            )
        )
    )
    # Customers whose segments must be re-evaluated at or after due_at: ingest marks them
    # in the same transaction as their aggregates, the segmenter adds time-driven wake-ups.
    op.execute("""
        CREATE TABLE segmentation_queue (
            customer_id text PRIMARY KEY,
            due_at timestamptz NOT NULL,
            cause_event_at timestamptz,
            enqueued_at timestamptz NOT NULL DEFAULT now()
        ) WITH (fillfactor = 70)
    """)
    op.execute("CREATE INDEX segmentation_queue_due ON segmentation_queue (due_at)")


def downgrade() -> None:
    for table in (
        "segmentation_queue",
        "customer_aggregates",
        "interactions",
        "orders",
        "processed_events",
        "ingest_offsets",
    ):
        op.execute(f"DROP TABLE IF EXISTS {table}")
