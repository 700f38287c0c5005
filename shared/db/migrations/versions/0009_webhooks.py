"""Webhooks: subscriptions, their delivery log and each delivery's attempts.

- webhook_subscriptions: a target URL, filters, the signing secret (and the previous one
  during a rotation's grace period), and the subscription's health;
- webhook_deliveries: one row per (subscription, event), written by the dispatcher's intake
  before it commits the change topic's offsets, sent and updated by its senders;
- webhook_attempts: every HTTP attempt of a delivery, for the log.

API keys may hold the scopes webhooks:read and webhooks:write.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_CHECK = "cardinality(scopes) > 0 AND scopes <@ ARRAY[{}]"
_SCOPES = ("segments:read", "definitions:read", "definitions:write", "admin", "traits:write")
_MINE = ("webhooks:read", "webhooks:write")


def _scopes_check(*scopes: str) -> None:
    op.execute("ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check")
    listed = ", ".join(f"'{scope}'" for scope in scopes)
    op.execute(
        f"ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check CHECK ({_CHECK.format(listed)})"
    )


def upgrade() -> None:
    _scopes_check(*_SCOPES, *_MINE)
    op.execute("""
        CREATE TABLE webhook_subscriptions (
            id uuid PRIMARY KEY,
            url text NOT NULL,
            description text NOT NULL DEFAULT '',
            dimensions text[] NOT NULL DEFAULT '{}',
            segments text[] NOT NULL DEFAULT '{}',
            audiences text[] NOT NULL DEFAULT '{}',
            causes text[] NOT NULL DEFAULT '{}',
            secret text NOT NULL,
            previous_secret text,
            previous_secret_expires_at timestamptz,
            is_enabled boolean NOT NULL DEFAULT true,
            disabled_at timestamptz,
            disabled_reason text,
            consecutive_failures integer NOT NULL DEFAULT 0,
            failing_since timestamptz,
            last_success_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            created_by text NOT NULL
        )
    """)
    # A lane is one (subscription, customer): its pending rows go out one at a time, in
    # topic order. The lane's head is its one pending row with next_attempt_at set; the
    # others wait with NULL (services/webhooks/repository.py keeps that invariant).
    op.execute("""
        CREATE TABLE webhook_deliveries (
            id bigserial PRIMARY KEY,
            subscription_id uuid NOT NULL REFERENCES webhook_subscriptions ON DELETE CASCADE,
            event_id text NOT NULL,
            event_type text NOT NULL,
            customer_id text NOT NULL,
            topic_partition integer NOT NULL,
            topic_offset bigint NOT NULL,
            event_time timestamptz,
            payload bytea NOT NULL,
            status text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz,
            leased_by text,
            deadline_at timestamptz NOT NULL,
            enqueued_at timestamptz NOT NULL DEFAULT now(),
            delivered_at timestamptz,
            failed_reason text,
            last_status_code integer,
            last_error text,
            last_latency_ms double precision,
            UNIQUE (subscription_id, event_id)
        )
    """)
    op.execute(
        "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) "
        "WHERE status = 'pending' AND next_attempt_at IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX webhook_deliveries_lane ON webhook_deliveries "
        "(subscription_id, customer_id, topic_partition, topic_offset) WHERE status = 'pending'"
    )
    op.execute(
        "CREATE INDEX webhook_deliveries_log ON webhook_deliveries (subscription_id, id DESC)"
    )
    op.execute(
        "CREATE INDEX webhook_deliveries_delivered ON webhook_deliveries (delivered_at) "
        "WHERE status = 'delivered'"
    )
    op.execute("""
        CREATE TABLE webhook_attempts (
            id bigserial PRIMARY KEY,
            delivery_id bigint NOT NULL REFERENCES webhook_deliveries ON DELETE CASCADE,
            attempt integer NOT NULL,
            attempted_at timestamptz NOT NULL,
            status_code integer,
            error text,
            latency_ms double precision NOT NULL
        )
    """)
    op.execute("CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS webhook_attempts")
    op.execute("DROP TABLE IF EXISTS webhook_deliveries")
    op.execute("DROP TABLE IF EXISTS webhook_subscriptions")
    op.execute(
        "UPDATE api_keys SET scopes = array_remove(array_remove(scopes, 'webhooks:read'), "
        "'webhooks:write')"
    )
    op.execute("DELETE FROM api_keys WHERE cardinality(scopes) = 0")
    _scopes_check(*_SCOPES)
