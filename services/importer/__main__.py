"""`python -m services.importer --orders FILE --until TIME [...]`: import a shop's history
(docs/import.md). Exit status: 0 done, 1 bad arguments or files, 3 the rows are in but the
segmenter has not evaluated every imported customer within the wait (run it again)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import structlog
import yaml

from services.importer import repository as repo
from services.importer import segments
from services.importer.files import FileError, SourceFile, detect_format
from services.importer.importer import (
    Importer,
    ImportFile,
    Outcome,
    RejectFileError,
    file_key,
    run_key,
)
from services.importer.mapping import (
    ColumnMapping,
    Kind,
    MappingError,
    load_mapping_file,
    parse_assignments,
    parse_time,
    parse_zone,
    resolve_columns,
)
from services.importer.progress import Progress
from services.importer.settings import ImporterSettings
from services.ingest.settings import IngestSettings
from shared.clock import SystemClock
from shared.db.engine import create_engine, pg_connection
from shared.db.migrate import require_current
from shared.definitions.repository import PUBLISH_POLICIES
from shared.lifecycle import install_stop_handlers
from shared.logging import configure_logging
from shared.settings import DatabaseSettings

log = structlog.get_logger("importer")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m services.importer",
        description="Import historical orders and interactions (docs/import.md).",
    )
    p.add_argument("--orders", action="append", default=[], type=Path, help="a file of orders")
    p.add_argument(
        "--interactions", action="append", default=[], type=Path, help="a file of interactions"
    )
    p.add_argument(
        "--until",
        required=True,
        help="only rows before this time are imported (later ones are rejected): where the"
        " live stream takes over. ISO 8601; naive in --timezone",
    )
    p.add_argument("--timezone", default=None, help="zone of naive times (default UTC)")
    p.add_argument("--format", default="auto", choices=("auto", "csv", "jsonl", "parquet"))
    p.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="which column holds a field: customer, order, time, amount, currency, type"
        " (interactions: customer, time, type, properties)",
    )
    p.add_argument(
        "--type-value",
        action="append",
        default=[],
        metavar="VALUE=TYPE",
        help="what a value of the type column means, e.g. wc-refunded=order_refunded",
    )
    p.add_argument("--mapping", type=Path, help="a YAML or JSON mapping file (docs/import.md)")
    p.add_argument("--currency", default=None, help="currency of rows without one")
    p.add_argument(
        "--publish",
        default="summary",
        choices=PUBLISH_POLICIES,
        help="segment changes of the import: each (one event per change), none (history"
        " only) or summary (history, then one import-completed event)",
    )
    p.add_argument("--rejects", type=Path, help="the reject file (JSON Lines)")
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="exit once the customers are queued, without waiting for the segmenter",
    )
    return p


def build_files(args: argparse.Namespace, base_currency: str) -> list[ImportFile]:
    content: dict[str, Any] = {}
    if args.mapping is not None:
        try:
            loaded = yaml.safe_load(args.mapping.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise MappingError(f"{args.mapping}: {exc}") from None
        content = loaded or {}
    columns = parse_assignments(args.column, "--column")
    types = parse_assignments(args.type_value, "--type-value")
    files: list[ImportFile] = []
    for kind, paths in (("orders", args.orders), ("interactions", args.interactions)):
        kind_: Kind = kind  # type: ignore[assignment]
        from_file = load_mapping_file(content, kind_) if content else {}
        relevant = {k: v for k, v in columns.items() if kind == "orders" or k != "order"}
        if kind == "interactions":
            relevant = {
                k: v for k, v in relevant.items() if k in ("customer", "time", "type", "properties")
            }
        else:
            relevant = {k: v for k, v in relevant.items() if k != "properties"}
        mapping = ColumnMapping(
            kind=kind_,
            columns={**from_file.get("columns", {}), **relevant},
            types={**from_file.get("types", {}), **types}
            if kind == "orders"
            else from_file.get("types", {}),
            timezone=args.timezone or from_file.get("timezone", "UTC"),
            currency=(args.currency or from_file.get("currency") or base_currency).upper(),
        )
        for path in paths:
            if not path.is_file():
                raise FileError(f"{path}: no such file")
            files.append(ImportFile(path, detect_format(path, args.format), mapping))
    if not files:
        raise MappingError("nothing to import: pass --orders FILE and/or --interactions FILE")
    return files


def parse_until(text: str, zone_name: str) -> datetime:
    try:
        until = parse_time(text, parse_zone(zone_name))
    except ValueError as exc:
        raise MappingError(f"--until {text!r}: {exc}") from None
    if until > datetime.now(UTC):
        raise MappingError(f"--until {text!r} is in the future: import only what has happened")
    return until


async def main(args: argparse.Namespace) -> int:
    db = DatabaseSettings()
    ingest = IngestSettings()
    settings = ImporterSettings()
    configure_logging(db.log_level, json=db.log_json)
    try:
        files = build_files(args, ingest.base_currency)
        until = parse_until(args.until, args.timezone or "UTC")
        for f in files:  # every file's columns, before any row of any file is read
            source = SourceFile(f.path, f.format)
            resolve_columns(f.mapping, source.header, by_index=source.by_index)
        keyed = [(file_key(f.path, f.format, f.mapping, until), f) for f in files]
    except (MappingError, FileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    run_id = run_key(keyed, args.publish, until)
    progress = Progress(interval_seconds=settings.progress_interval_seconds)
    async with AsyncExitStack() as stack:
        engine = create_engine(
            db.database_url,
            db.database_schema,
            application_name="importer",
            tls=db.postgres_tls(),
        )
        stack.push_async_callback(engine.dispose)
        await require_current(engine, db.database_schema)
        importer = Importer(
            engine,
            SystemClock(),
            rates=dict(ingest.currency_rates),
            retention=timedelta(days=ingest.interaction_retention_days),
            chunk_rows=settings.chunk_rows,
            progress=progress,
        )
        install_stop_handlers(importer.stop)
        # The run's lock, held by this connection for the whole run.
        lock = await stack.enter_async_context(pg_connection(engine))
        if not await repo.lock_run(lock, run_id):
            print(f"error: another importer is running import {run_id}", file=sys.stderr)
            return 1
        stack.push_async_callback(repo.unlock_run, lock, run_id)
        given = None if args.rejects is None else str(args.rejects.absolute())
        default = str(Path.cwd() / f"import-{run_id[:12]}.rejects.jsonl")
        async with lock.transaction():
            run = await repo.start_run(lock, run_id, args.publish, until, given or default)
        if given is not None and given != run.reject_path:
            print(
                f"error: import {run_id} keeps its rejects in {run.reject_path};"
                " pass that path to --rejects, or none",
                file=sys.stderr,
            )
            return 1
        reject_path = Path(run.reject_path)
        log.info(
            "import_run",
            run_id=run_id,
            files=len(files),
            until=until.isoformat(),
            publish=args.publish,
            rejects=str(reject_path),
        )
        outcome = await _run(importer, run, keyed, reject_path, progress, settings, args)
        if isinstance(outcome, int):
            return outcome
        totals = await repo.run_totals(lock, run_id)
    result = Outcome(
        run_id=run_id,
        rows_read=int(totals["rows_read"]),
        imported=int(totals["imported"]),
        duplicates=int(totals["duplicates"]),
        rejected=int(totals["rejected"]),
        customers=int(totals["customers"]),
        elapsed_seconds=outcome[0],
        rows_this_time=outcome[1],
        imported_this_time=outcome[2],
        segmented=outcome[3],
        reject_path=str(reject_path),
    )
    print(progress.summary(result), file=sys.stderr)
    print(orjson.dumps(dataclasses.asdict(result) | {"publish": args.publish}).decode())
    if not result.segmented and not args.no_wait:
        print(
            "the segmenter has not evaluated every imported customer yet (is it running?);"
            " run the same command again to wait for it",
            file=sys.stderr,
        )
        return 3
    return 0


async def _run(
    importer: Importer,
    run: repo.Run,
    keyed: list[tuple[str, ImportFile]],
    reject_path: Path,
    progress: Progress,
    settings: ImporterSettings,
    args: argparse.Namespace,
) -> tuple[float, int, int, bool] | int:
    """Load, queue, wait: (load seconds, rows read, imported, segmented), or an exit status."""
    started = time.monotonic()
    drawing = asyncio.create_task(progress.render_loop())
    read = imported = 0
    failure: Exception | None = None
    try:
        if run.queued_at is None:
            try:
                read, imported = await importer.load(run, keyed, reject_path)
            except (MappingError, FileError, RejectFileError) as exc:
                failure = exc
            if failure is not None or importer.is_stopping:
                return 1 if failure is not None else 130
            await segments.queue(importer.engine, importer.clock, run.run_id)
        elapsed = time.monotonic() - started
        run = await segments.reload(importer.engine, run)
        segmented = run.completed_at is not None
        if not segmented and not args.no_wait:
            segmented = await segments.wait_segmented(
                importer.engine,
                importer.clock,
                run,
                progress,
                wait_seconds=settings.segment_wait_seconds,
                poll_seconds=settings.segment_poll_seconds,
                is_stopping=lambda: importer.is_stopping,
            )
    finally:
        drawing.cancel()
        await asyncio.gather(drawing, return_exceptions=True)
        if failure is not None:
            print(f"error: {failure}", file=sys.stderr)
    return elapsed, read, imported, segmented


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parser().parse_args())))
