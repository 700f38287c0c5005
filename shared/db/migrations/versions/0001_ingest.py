"""Ingest: offsets with fencing epochs, dedup ledger, orders, interactions, aggregates, work queue.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Consumed offsets live beside the aggregates so that both commit in one transaction.
    # owner_epoch fences a worker that lost its partition: each new owner bumps it, and a
    # batch commits only while the epoch it read is still current.
    op.execute("""
        CREATE TABLE ingest_offsets (
            topic text NOT NULL,
            partition integer NOT NULL,
            next_offset bigint NOT NULL DEFAULT 0,
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
    op.execute("CREATE INDEX processed_events_seen_at ON processed_events (seen_at)")
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
    op.execute("CREATE INDEX orders_customer_placed ON orders (customer_id, placed_at)")
    op.execute("""
        CREATE TABLE interactions (
            customer_id text NOT NULL,
            occurred_at timestamptz NOT NULL,
            type text NOT NULL
        )
    """)
    op.execute("CREATE INDEX interactions_customer_time ON interactions (customer_id, occurred_at)")
    op.execute("CREATE INDEX interactions_time ON interactions (occurred_at)")
    op.execute("""
        CREATE TABLE interaction_totals (
            customer_id text NOT NULL,
            type text NOT NULL,
            count bigint NOT NULL,
            last_at timestamptz NOT NULL,
            PRIMARY KEY (customer_id, type)
        )
    """)
    op.execute("""
        CREATE TABLE customer_aggregates (
            customer_id text PRIMARY KEY,
            order_count integer NOT NULL DEFAULT 0,
            net_spend numeric(20, 4) NOT NULL DEFAULT 0,
            first_order_at timestamptz,
            last_order_at timestamptz,
            interaction_count bigint NOT NULL DEFAULT 0,
            last_interaction_at timestamptz,
            last_add_to_cart_at timestamptz,
            last_event_at timestamptz,
            version bigint NOT NULL DEFAULT 1,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    # Customers whose segments must be re-evaluated at or after due_at: ingest marks them
    # in the same transaction as their aggregates, the segmenter adds time-driven wake-ups.
    op.execute("""
        CREATE TABLE segmentation_queue (
            customer_id text PRIMARY KEY,
            due_at timestamptz NOT NULL,
            cause_event_at timestamptz,
            enqueued_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute("CREATE INDEX segmentation_queue_due ON segmentation_queue (due_at)")


def downgrade() -> None:
    for table in (
        "segmentation_queue",
        "customer_aggregates",
        "interaction_totals",
        "interactions",
        "orders",
        "processed_events",
        "ingest_offsets",
    ):
        op.execute(f"DROP TABLE IF EXISTS {table}")
