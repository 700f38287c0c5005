"""Segment and audience sizes over time, kept without counting the customers.

- segment_size_deltas: appended in the transaction that changes customer_segments (the
  segmenter's batch commit, erasure): a signed count per (dimension, segment). Appends only,
  so no row is shared by concurrent writers;
- segment_sizes: the running totals, as of the last fold of the deltas;
- segment_size_snapshots: the totals at a fixed cadence, per step (5 minutes, hourly, daily
  by default), pruned per step;
- segment_size_recounts: each recount from customer_segments, with the drift it corrected.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE segment_size_deltas (
            id bigserial PRIMARY KEY,
            dimension text NOT NULL,
            segment text NOT NULL,
            customers integer NOT NULL
        )
    """)
    op.execute("""
        CREATE TABLE segment_sizes (
            dimension text NOT NULL,
            segment text NOT NULL,
            customers bigint NOT NULL,
            PRIMARY KEY (dimension, segment)
        )
    """)
    # The totals start from what is stored now; the first recount confirms them.
    op.execute("""
        INSERT INTO segment_sizes (dimension, segment, customers)
        SELECT dimension, segment, count(*) FROM customer_segments GROUP BY 1, 2
    """)
    op.execute("""
        CREATE TABLE segment_size_snapshots (
            step_seconds integer NOT NULL,
            at timestamptz NOT NULL,
            dimension text NOT NULL,
            segment text NOT NULL,
            customers bigint NOT NULL,
            PRIMARY KEY (step_seconds, at, dimension, segment)
        )
    """)
    op.execute("""
        CREATE TABLE segment_size_recounts (
            id bigserial PRIMARY KEY,
            recounted_at timestamptz NOT NULL,
            drift_customers bigint NOT NULL
        )
    """)


def downgrade() -> None:
    for table in (
        "segment_size_recounts",
        "segment_size_snapshots",
        "segment_sizes",
        "segment_size_deltas",
    ):
        op.execute(f"DROP TABLE {table}")
