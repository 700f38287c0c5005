"""`python -m services.ingest verify [--repair]`: recompute every customer's aggregates from
the stored order and interaction rows and report drift; with `--repair`, correct it and
queue the corrected customers for segmentation.

What it can check: the order side (count, net spend, first and last order) exactly, since
every order row is kept; the interaction side only as lower bounds, since interaction rows
older than the retention are pruned while their counts stay in the aggregates. A deployment
that ran a version with the cross-partition undercount needs this once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest import repository as repo
from shared.db.engine import create_engine, pg_connection
from shared.db.migrate import require_current
from shared.settings import ConnectionSettings

CHUNK = 500


@dataclass
class Report:
    checked: int = 0
    drifted: int = 0
    repaired: int = 0
    by_field: dict[str, int] = field(default_factory=dict)
    examples: list[repo.Drift] = field(default_factory=list)


async def verify(engine: AsyncEngine, *, repair: bool, examples: int = 10) -> Report:
    """Walk every customer in chunks, one transaction each, so live ingest waits for at
    most one chunk's rows at a time."""
    report = Report()
    after = ""
    while True:
        async with pg_connection(engine) as conn, conn.transaction():
            ids = await repo.customers_to_verify(conn, after, CHUNK)
            if not ids:
                break
            after = ids[-1]
            drifts = await repo.verify_customers(conn, ids)
            if repair and drifts:
                changed = [d.customer_id for d in drifts]
                await repo.repair_customers(conn, changed)
                await repo.queue_repaired(conn, changed, datetime.now(UTC))
                report.repaired += len(changed)
        report.checked += len(ids)
        report.drifted += len(drifts)
        for drift in drifts:
            for name in drift.fields:
                report.by_field[name] = report.by_field.get(name, 0) + 1
        report.examples += drifts[: max(0, examples - len(report.examples))]
    return report


def _show(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def print_report(report: Report, *, repair: bool) -> None:
    print(f"customers checked: {report.checked}")
    print(f"customers with drift: {report.drifted}")
    for name, count in sorted(report.by_field.items()):
        print(f"  {name}: {count}")
    for drift in report.examples:
        detail = "; ".join(
            f"{name} stored {_show(stored)}, rows give {_show(truth)}"
            for name, (stored, truth) in drift.fields.items()
        )
        print(f"  e.g. {drift.customer_id}: {detail}")
    if repair:
        print(f"customers repaired and queued for segmentation: {report.repaired}")
    elif report.drifted:
        print("run again with --repair to correct them")


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.ingest verify",
        description="Recompute aggregates from stored rows and report (or repair) drift.",
    )
    parser.add_argument("--repair", action="store_true", help="correct drift and re-queue")
    args = parser.parse_args(argv)
    conn = ConnectionSettings()
    engine = create_engine(
        conn.database_url,
        conn.database_schema,
        application_name="verify",
        tls=conn.postgres_tls(),
    )
    try:
        await require_current(engine, conn.database_schema)
        report = await verify(engine, repair=args.repair)
    finally:
        await engine.dispose()
    print_report(report, repair=args.repair)
    return 0 if args.repair or not report.drifted else 1


def cli(argv: list[str]) -> None:
    sys.exit(asyncio.run(main(argv)))
