"""Definitions users shape while the service runs: contents, versions, in force, backfills,
previews; exit changes, the cause on every change, scores in the evaluation.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Versions point to contents: a rollback is a new version of an old content.
    op.execute("""
        CREATE TABLE definition_contents (
            content_hash text PRIMARY KEY,
            content text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute("""
        INSERT INTO definition_contents (content_hash, content, created_at)
        SELECT content_hash, content, loaded_at FROM segment_definitions
    """)
    op.execute(
        "ALTER TABLE segment_definitions DROP CONSTRAINT segment_definitions_content_hash_key"
    )
    op.execute("ALTER TABLE segment_definitions DROP COLUMN content")
    op.execute("ALTER TABLE segment_definitions RENAME COLUMN loaded_at TO activated_at")
    op.execute("""
        ALTER TABLE segment_definitions
            ADD FOREIGN KEY (content_hash) REFERENCES definition_contents (content_hash),
            ADD COLUMN activated_by text NOT NULL DEFAULT 'segmenter',
            ADD COLUMN note text NOT NULL DEFAULT '',
            ADD COLUMN replaces integer REFERENCES segment_definitions (version),
            ADD COLUMN publish text NOT NULL DEFAULT 'each'
                CHECK (publish IN ('each', 'none', 'summary')),
            ADD COLUMN changed_dimensions text[] NOT NULL DEFAULT '{}'
    """)
    # One row: the version in force. Activation updates it under its row lock, and every
    # evaluation's commit reads it FOR SHARE, so no evaluation made under an older version
    # can commit after an activation has (services/segmenter/worker.py).
    op.execute("""
        CREATE TABLE definitions_in_force (
            singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            version integer NOT NULL REFERENCES segment_definitions (version)
        )
    """)
    op.execute("""
        INSERT INTO definitions_in_force (version)
        SELECT max(version) FROM segment_definitions HAVING max(version) IS NOT NULL
    """)
    # The re-evaluation an activation starts: customers are fed to the queue in id order,
    # `after_customer` is how far feeding got (committed with each chunk, so it resumes).
    op.execute("""
        CREATE TABLE definition_backfills (
            version integer PRIMARY KEY REFERENCES segment_definitions (version),
            after_customer text NOT NULL DEFAULT '',
            total bigint NOT NULL,
            queued bigint NOT NULL DEFAULT 0,
            started_at timestamptz NOT NULL DEFAULT now(),
            fed_at timestamptz,
            completed_at timestamptz,
            superseded_by integer REFERENCES segment_definitions (version)
        )
    """)
    op.execute("""
        CREATE TABLE definition_previews (
            id uuid PRIMARY KEY,
            created_by text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            status text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'done', 'failed', 'cancelled')),
            content_hash text NOT NULL,
            content text NOT NULL,
            base_version integer NOT NULL REFERENCES segment_definitions (version),
            samples integer NOT NULL,
            as_of timestamptz,
            done bigint NOT NULL DEFAULT 0,
            total bigint,
            claimed_by text,
            heartbeat_at timestamptz,
            finished_at timestamptz,
            result jsonb,
            error text
        )
    """)
    op.execute(
        "CREATE INDEX definition_previews_pending ON definition_previews (created_at)"
        " WHERE status IN ('pending', 'running')"
    )
    # An exit change (a removed dimension) has no segment to go to.
    op.execute("ALTER TABLE segment_history ALTER COLUMN to_segment DROP NOT NULL")
    op.execute("ALTER TABLE customer_evaluations ADD COLUMN scores jsonb")
    # Re-evaluations an activation queues are leased after every live row that is due
    # (services/segmenter/queue.py): the two partial indexes keep both scans ordered.
    op.execute(
        "CREATE INDEX segmentation_queue_live ON segmentation_queue (due_at)"
        " WHERE cause <> 'definitions'"
    )
    op.execute(
        "CREATE INDEX segmentation_queue_backfill ON segmentation_queue (due_at)"
        " WHERE cause = 'definitions'"
    )
    op.execute("DROP INDEX segmentation_queue_due")


def downgrade() -> None:
    op.execute("CREATE INDEX segmentation_queue_due ON segmentation_queue (due_at)")
    op.execute("DROP INDEX IF EXISTS segmentation_queue_backfill")
    op.execute("DROP INDEX IF EXISTS segmentation_queue_live")
    op.execute("ALTER TABLE customer_evaluations DROP COLUMN IF EXISTS scores")
    op.execute("DELETE FROM segment_history WHERE to_segment IS NULL")
    op.execute("ALTER TABLE segment_history ALTER COLUMN to_segment SET NOT NULL")
    for table in ("definition_previews", "definition_backfills", "definitions_in_force"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("""
        ALTER TABLE segment_definitions
            DROP COLUMN changed_dimensions, DROP COLUMN publish, DROP COLUMN replaces,
            DROP COLUMN note, DROP COLUMN activated_by,
            DROP CONSTRAINT segment_definitions_content_hash_fkey
    """)
    op.execute("ALTER TABLE segment_definitions RENAME COLUMN activated_at TO loaded_at")
    op.execute("ALTER TABLE segment_definitions ADD COLUMN content text")
    op.execute("""
        UPDATE segment_definitions d SET content = c.content
        FROM definition_contents c WHERE c.content_hash = d.content_hash
    """)
    # Rollbacks made versions that share a content; the old schema cannot hold them.
    op.execute("""
        DELETE FROM segment_definitions d USING segment_definitions e
        WHERE d.content_hash = e.content_hash AND d.version > e.version
    """)
    op.execute("ALTER TABLE segment_definitions ALTER COLUMN content SET NOT NULL")
    op.execute("ALTER TABLE segment_definitions ADD UNIQUE (content_hash)")
    op.execute("DROP TABLE definition_contents")
