"""API keys may hold the definitions scopes (the /v1/definitions endpoints).

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_CHECK = "cardinality(scopes) > 0 AND scopes <@ ARRAY[{}]"


def _scopes_check(*scopes: str) -> None:
    op.execute("ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check")
    listed = ", ".join(f"'{scope}'" for scope in scopes)
    op.execute(
        f"ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check CHECK ({_CHECK.format(listed)})"
    )


def upgrade() -> None:
    _scopes_check("segments:read", "definitions:read", "definitions:write", "admin")


def downgrade() -> None:
    op.execute("""
        UPDATE api_keys
        SET scopes = array_remove(array_remove(scopes, 'definitions:read'), 'definitions:write')
    """)
    # The old schema cannot hold a key with no scope: like a rollback's versions in 0005,
    # what it cannot hold goes.
    op.execute("DELETE FROM api_keys WHERE cardinality(scopes) = 0")
    _scopes_check("segments:read", "admin")
