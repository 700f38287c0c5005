"""API keys that may send events over HTTP (`POST /v1/events`, scope `events:write`).

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_CHECK = "cardinality(scopes) > 0 AND scopes <@ ARRAY[{}]"
_SCOPES = (
    "segments:read",
    "definitions:read",
    "definitions:write",
    "traits:write",
    "webhooks:read",
    "webhooks:write",
    "admin",
)


def _scopes_check(*scopes: str) -> None:
    op.execute("ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check")
    listed = ", ".join(f"'{scope}'" for scope in scopes)
    op.execute(
        f"ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check CHECK ({_CHECK.format(listed)})"
    )


def upgrade() -> None:
    _scopes_check(*_SCOPES, "events:write")


def downgrade() -> None:
    op.execute("UPDATE api_keys SET scopes = array_remove(scopes, 'events:write')")
    # As in 0006: a key left with no scope cannot be held by the old check, and goes.
    op.execute("DELETE FROM api_keys WHERE cardinality(scopes) = 0")
    _scopes_check(*_SCOPES)
