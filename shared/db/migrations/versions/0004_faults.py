"""Exact under faults: order deltas, earliest placement, change-id incarnations, cache repairs.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The placement that wins is the earliest by occurred_at, ties broken by the smaller
    # event id, so the event id of the placement kept must be stored to compare with.
    op.execute("ALTER TABLE orders ADD COLUMN placed_event_id text")
    # Written by each upsert with what the row counted for before it (NULL: nothing), under
    # the row's lock: the difference to what it counts for after is the exact delta to add
    # to the customer's totals, however many workers change the customer's orders at once.
    op.execute("ALTER TABLE orders ADD COLUMN prev_net numeric(20, 4)")
    # A customer erased and then back starts a new incarnation: change ids are derived from
    # it, so they never repeat what was published for the erased one.
    op.execute(
        "ALTER TABLE customer_evaluations"
        " ADD COLUMN incarnation uuid NOT NULL DEFAULT gen_random_uuid()"
    )
    # Customers whose cached document could not be marked stale before their evaluation
    # committed (Redis unreachable): repaired in Redis once it answers again.
    op.execute("""
        CREATE TABLE cache_repairs (
            customer_id text PRIMARY KEY,
            version bigint NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS cache_repairs")
    op.execute("ALTER TABLE customer_evaluations DROP COLUMN IF EXISTS incarnation")
    op.execute("ALTER TABLE orders DROP COLUMN IF EXISTS prev_net")
    op.execute("ALTER TABLE orders DROP COLUMN IF EXISTS placed_event_id")
