"""API: hashed API keys with scopes, and the audit log of personal-data reads and admin actions.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only a SHA-256 of each key is stored; the key itself is shown once, at creation. The id
    # is the key's non-secret prefix, so a presented key is found without scanning.
    op.execute("""
        CREATE TABLE api_keys (
            id text PRIMARY KEY,
            name text NOT NULL,
            key_hash bytea NOT NULL,
            scopes text[] NOT NULL
                CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['segments:read', 'admin']),
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz
        )
    """)
    # Who (actor and key) did what (action), to which customer if any, and when.
    op.execute("""
        CREATE TABLE audit_log (
            id bigserial PRIMARY KEY,
            at timestamptz NOT NULL,
            actor text NOT NULL,
            key_id text,
            action text NOT NULL,
            customer_id text,
            detail jsonb
        )
    """)
    op.execute(
        "CREATE INDEX audit_log_customer ON audit_log (customer_id, id)"
        " WHERE customer_id IS NOT NULL"
    )
    op.execute("CREATE INDEX audit_log_at ON audit_log USING brin (at)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS audit_log")
    op.execute("DROP TABLE IF EXISTS api_keys")
