"""Event metrics kept at a cost that does not grow with history.

- orders keep their currency and line items, interactions their properties and event id,
  so that filters on them can be evaluated (and new metrics initialised) from stored rows;
- fact_changes: what ingest changed since the segmenter last read a customer;
- metric_contributions: per customer and event filter, what each matching event adds;
- customer_metrics: per customer, the running values of its event metrics as of a time;
- ingest_retention: how long ingest keeps the rows of each source, for validation.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE orders ADD COLUMN currency text, ADD COLUMN items jsonb")
    op.execute("ALTER TABLE interactions ADD COLUMN event_id text, ADD COLUMN properties jsonb")
    # Written by ingest in each batch's transaction, read and deleted by the evaluation that
    # folds them in: each change is folded exactly once, and only changes are ever read.
    op.execute("""
        CREATE TABLE fact_changes (
            id bigserial PRIMARY KEY,
            customer_id text NOT NULL,
            order_id text,
            event_id text,
            occurred_at timestamptz,
            type text,
            properties jsonb
        )
    """)
    op.execute("CREATE INDEX fact_changes_customer ON fact_changes (customer_id, id)")
    # Only the segmenter writes these, for customers it holds the lease of.
    op.execute("""
        CREATE TABLE metric_contributions (
            customer_id text NOT NULL,
            filter_key text NOT NULL,
            ref text NOT NULL,
            at timestamptz NOT NULL,
            amount numeric(20, 4) NOT NULL DEFAULT 0,
            quantity bigint NOT NULL DEFAULT 0,
            vals jsonb,
            PRIMARY KEY (customer_id, filter_key, ref)
        )
    """)
    op.execute(
        "CREATE INDEX metric_contributions_time ON metric_contributions"
        " (customer_id, filter_key, at)"
    )
    op.execute("""
        CREATE TABLE customer_metrics (
            customer_id text PRIMARY KEY,
            as_of timestamptz NOT NULL,
            filters text[] NOT NULL DEFAULT '{}',
            state jsonb NOT NULL DEFAULT '{}',
            since jsonb NOT NULL DEFAULT '{}'
        ) WITH (fillfactor = 70)
    """)
    op.execute("""
        CREATE TABLE ingest_retention (
            source text PRIMARY KEY,
            retention interval NOT NULL,
            setting text NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
    """)


def downgrade() -> None:
    for table in ("ingest_retention", "customer_metrics", "metric_contributions", "fact_changes"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("ALTER TABLE interactions DROP COLUMN event_id, DROP COLUMN properties")
    op.execute("ALTER TABLE orders DROP COLUMN currency, DROP COLUMN items")
