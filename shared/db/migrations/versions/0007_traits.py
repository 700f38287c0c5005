"""Traits: who each customer is (customer_traits), and API keys that may write them.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_CHECK = "cardinality(scopes) > 0 AND scopes <@ ARRAY[{}]"
_SCOPES = ("segments:read", "definitions:read", "definitions:write", "admin")


def _scopes_check(*scopes: str) -> None:
    op.execute("ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check")
    listed = ", ".join(f"'{scope}'" for scope in scopes)
    op.execute(
        f"ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check CHECK ({_CHECK.format(listed)})"
    )


def upgrade() -> None:
    # `traits`: the current values only, by trait name (custom traits by their bare name),
    # as JSON; a cleared trait is absent. `trait_times`: per trait, {"at", "event_id"} of
    # the event that last set or cleared it (a cleared one keeps it as a tombstone), and
    # `replaced_*` the latest replace event's, which stands for the tombstone of every trait
    # set before it. Ingest merges events under the row's lock (services/ingest/traits.py).
    op.execute("""
        CREATE TABLE customer_traits (
            customer_id text PRIMARY KEY,
            traits jsonb NOT NULL DEFAULT '{}',
            trait_times jsonb NOT NULL DEFAULT '{}',
            replaced_at timestamptz,
            replaced_event_id text,
            version bigint NOT NULL DEFAULT 0,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    _scopes_check(*_SCOPES, "traits:write")


def downgrade() -> None:
    op.execute("UPDATE api_keys SET scopes = array_remove(scopes, 'traits:write')")
    # As in 0006: a key left with no scope cannot be held by the old check, and goes.
    op.execute("DELETE FROM api_keys WHERE cardinality(scopes) = 0")
    _scopes_check(*_SCOPES)
    op.execute("DROP TABLE IF EXISTS customer_traits")
