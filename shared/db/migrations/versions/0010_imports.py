"""Historical imports (services/importer): runs, per-file checkpoints, imported customers.

- import_runs: one per set of files and options; its publish policy is what the segmenter
  applies to the changes of the customers it queues with cause `import`;
- import_files: per file (its content and how it is read, hashed), the next row to read
  and the counts so far, committed in the same transaction as the rows before it;
- import_customers: who a run imported, queued for the segmenter once every file is in.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE import_runs (
            run_id text PRIMARY KEY,
            publish text NOT NULL CHECK (publish IN ('each', 'none', 'summary')),
            until timestamptz NOT NULL,
            reject_path text NOT NULL,
            reject_bytes bigint NOT NULL DEFAULT 0,
            started_at timestamptz NOT NULL DEFAULT now(),
            loaded_at timestamptz,
            queued_at timestamptz,
            customers bigint,
            completed_at timestamptz
        )
    """)
    op.execute("""
        CREATE TABLE import_files (
            file_key text PRIMARY KEY,
            run_id text NOT NULL REFERENCES import_runs (run_id),
            path text NOT NULL,
            kind text NOT NULL CHECK (kind IN ('orders', 'interactions')),
            next_row bigint NOT NULL DEFAULT 0,
            rows_read bigint NOT NULL DEFAULT 0,
            imported bigint NOT NULL DEFAULT 0,
            duplicates bigint NOT NULL DEFAULT 0,
            rejected bigint NOT NULL DEFAULT 0,
            done_at timestamptz
        )
    """)
    op.execute("CREATE INDEX import_files_run ON import_files (run_id)")
    op.execute("""
        CREATE TABLE import_customers (
            run_id text NOT NULL REFERENCES import_runs (run_id),
            customer_id text NOT NULL,
            -- Some of their orders went in without fact_changes (they had no read-model
            -- state then): their state is rebuilt from their rows when queued.
            facts_skipped boolean NOT NULL DEFAULT false,
            PRIMARY KEY (run_id, customer_id)
        )
    """)


def downgrade() -> None:
    for table in ("import_customers", "import_files", "import_runs"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
