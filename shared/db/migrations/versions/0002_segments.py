"""Segmenter: definitions, population stats, current segments, history, outbox.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE segment_definitions (
            version serial PRIMARY KEY,
            content text NOT NULL,
            content_hash text NOT NULL UNIQUE,
            loaded_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute("""
        CREATE TABLE population_stats (
            id bigserial PRIMARY KEY,
            definition_version integer NOT NULL REFERENCES segment_definitions (version),
            computed_at timestamptz NOT NULL,
            customers bigint NOT NULL,
            stats jsonb NOT NULL
        )
    """)
    # One row per customer: the evaluation version orders writes to Redis (an older one never
    # overwrites a newer), and change_sequence numbers this customer's changes for stable ids.
    op.execute("""
        CREATE TABLE customer_evaluations (
            customer_id text PRIMARY KEY,
            version bigint NOT NULL,
            change_sequence bigint NOT NULL DEFAULT 0,
            definition_version integer NOT NULL,
            evaluated_at timestamptz NOT NULL,
            next_change_at timestamptz
        ) WITH (fillfactor = 80)
    """)
    op.execute("""
        CREATE TABLE customer_segments (
            customer_id text NOT NULL,
            dimension text NOT NULL,
            segment text NOT NULL,
            since timestamptz NOT NULL,
            reason text NOT NULL,
            definition_version integer NOT NULL,
            evaluated_at timestamptz NOT NULL,
            PRIMARY KEY (customer_id, dimension)
        )
    """)
    op.execute(
        "CREATE INDEX customer_segments_members"
        " ON customer_segments (dimension, segment, customer_id)"
    )
    op.execute("""
        CREATE TABLE segment_history (
            id bigserial PRIMARY KEY,
            change_id uuid NOT NULL UNIQUE,
            customer_id text NOT NULL,
            dimension text NOT NULL,
            from_segment text,
            to_segment text NOT NULL,
            reason text NOT NULL,
            cause text NOT NULL,
            definition_version integer NOT NULL,
            caused_by_event_at timestamptz,
            evaluated_at timestamptz NOT NULL,
            sequence bigint NOT NULL
        )
    """)
    op.execute("CREATE INDEX segment_history_customer ON segment_history (customer_id, id DESC)")
    op.execute("CREATE INDEX segment_history_time ON segment_history USING brin (evaluated_at)")
    # Transactional outbox: written with the history row, published to Kafka afterwards in
    # id order, deleted once Kafka has acknowledged it.
    op.execute("""
        CREATE TABLE segment_outbox (
            id bigserial PRIMARY KEY,
            customer_id text NOT NULL,
            change_id uuid NOT NULL,
            payload bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    # Why a customer is queued: an ingested event, a time-driven wake-up, or moved cut-offs.
    op.execute("ALTER TABLE segmentation_queue ADD COLUMN cause text NOT NULL DEFAULT 'event'")


def downgrade() -> None:
    op.execute("ALTER TABLE segmentation_queue DROP COLUMN cause")
    for table in (
        "segment_outbox",
        "segment_history",
        "customer_segments",
        "customer_evaluations",
        "population_stats",
        "segment_definitions",
    ):
        op.execute(f"DROP TABLE IF EXISTS {table}")
