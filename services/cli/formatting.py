"""What the definitions commands print, from the API's JSON answers. Pure: text in, text out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from services.cli.client import ApiFailure

_NONE = "-"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns left-aligned, numbers right-aligned, two spaces apart."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [
        max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)
    ]
    numeric = [
        bool(cells) and all(row[i].lstrip("+-").isdigit() or row[i] == _NONE for row in cells)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        padded = (
            value.rjust(width) if is_number else value.ljust(width)
            for value, width, is_number in zip(values, widths, numeric, strict=True)
        )
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def _cell(value: object) -> str:
    if value is None:
        return _NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def failure_lines(failure: ApiFailure) -> list[str]:
    """The error, then every problem on a line of its own as `dimension/rule: message`."""
    status = "" if failure.status is None else f" (HTTP {failure.status})"
    lines = [f"error: {failure.error}{status}: {failure.detail}"]
    for problem in failure.problems:
        where = "/".join(str(problem[k]) for k in ("dimension", "rule") if problem.get(k))
        message = str(problem.get("message", problem))
        lines.append(f"{where}: {message}" if where else message)
    return lines


def summary_text(summary: Mapping[str, Any]) -> str:
    """A validated document: its dimensions, cut-offs and scores, and what would change."""
    lines = [f"valid: content hash {summary['content_hash']}"]
    if summary.get("description"):
        lines.append(f"description: {summary['description']}")
    for dimension in summary["dimensions"]:
        lines.append(
            f"dimension {dimension['name']}: {', '.join(dimension['segments'])}"
            f" (reads {', '.join(dimension['metrics'])})"
        )
    for audience in summary.get("audiences") or []:
        lines.append(f"audience {audience['name']}: {audience['condition']}")
    for cutoff in summary["cutoffs"]:
        spec = (
            f"top {_number(cutoff['top_percent'])}% of {cutoff['metric']}"
            if cutoff["top_percent"] is not None
            else f"{_number(cutoff['value'])}"
            + (f" ({cutoff['metric']})" if cutoff["metric"] else "")
        )
        lines.append(f"cut-off {cutoff['name']}: {spec}")
    for score in summary["scores"]:
        lines.append(
            f"score {score['name']}: {score['buckets']} buckets of {score['metric']},"
            f" {score['better']} is better"
        )
    in_force = summary["in_force_version"]
    changed = ", ".join(summary["changed_dimensions"]) or "none"
    against = "nothing is in force yet" if in_force is None else f"against version {in_force}"
    lines.append(f"changed dimensions ({against}): {changed}")
    return "\n".join(lines)


def _number(value: float | int | None) -> str:
    if value is None:
        return _NONE
    return str(int(value)) if float(value).is_integer() else str(value)


def backfill_state(backfill: Mapping[str, Any] | None) -> str:
    if backfill is None:
        return _NONE
    if backfill["superseded_by"] is not None:
        return f"superseded by {backfill['superseded_by']}"
    if backfill["completed_at"] is not None:
        return "completed"
    return f"queued {backfill['queued']}/{backfill['total']}"


def version_text(view: Mapping[str, Any]) -> str:
    """One version's metadata (and its content, when the answer has it)."""
    lines = [
        f"version {view['version']}{' (in force)' if view['in_force'] else ''}",
        f"activated {view['activated_at']} by {view['activated_by']}",
        f"replaces: {_cell(view['replaces'])}",
        f"publish: {view['publish']}",
        f"changed dimensions: {', '.join(view['changed_dimensions']) or 'none'}",
        f"backfill: {backfill_state(view['backfill'])}",
        f"content hash: {view['content_hash']}",
    ]
    if view["note"]:
        lines.append(f"note: {view['note']}")
    if "content" in view:
        lines.extend(["", view["content"].rstrip("\n")])
    return "\n".join(lines)


def versions_table(items: Sequence[Mapping[str, Any]]) -> str:
    return table(
        ("version", "", "activated_at", "by", "replaces", "publish", "changed", "backfill", "note"),
        (
            (
                v["version"],
                "*" if v["in_force"] else "",
                v["activated_at"],
                v["activated_by"],
                v["replaces"],
                v["publish"],
                ",".join(v["changed_dimensions"]) or _NONE,
                backfill_state(v["backfill"]),
                v["note"],
            )
            for v in items
        ),
    )


def diff_text(diff: Mapping[str, Any]) -> str:
    """What differs, dimension by dimension, then the documents' unified diff."""
    a, b = diff["from_version"], diff["to_version"]
    if diff["identical"]:
        return f"versions {a} and {b} define the same segments"
    lines = [f"from version {a} to version {b}:"]
    if diff["description"]["old"] != diff["description"]["new"]:
        lines.append(
            f"description: {diff['description']['old']!r} -> {diff['description']['new']!r}"
        )
    for dimension in diff["dimensions"]:
        if dimension["status"] == "unchanged":
            continue
        note = " (re-evaluated)" if dimension["reevaluated"] else " (nothing re-evaluated)"
        lines.append(f"dimension {dimension['name']}: {dimension['status']}{note}")
        for segment in dimension["segments"]:
            lines.append(f"  segment {segment['name']}: {segment['status']}")
            if segment["old_condition"] != segment["new_condition"]:
                if segment["old_condition"] is not None:
                    lines.append(f"    - {segment['old_condition']}")
                if segment["new_condition"] is not None:
                    lines.append(f"    + {segment['new_condition']}")
            old, new = segment["old_description"], segment["new_description"]
            if segment["status"] == "changed" and old != new:
                lines.append(f"    description {old!r} -> {new!r}")
        for let in dimension["lets"]:
            lines.append(f"  let {let['name']}: {let['status']}")
            if let["old"] is not None:
                lines.append(f"    - {let['old']}")
            if let["new"] is not None:
                lines.append(f"    + {let['new']}")
        if dimension["order_changed"]:
            lines.append("  rule order changed (the first matching rule wins)")
        if dimension["inputs_changed"]:
            lines.append(
                f"  reads changed cut-offs or scores: {', '.join(dimension['inputs_changed'])}"
            )
    for audience in diff.get("audiences") or []:
        if audience["status"] == "unchanged":
            continue
        note = " (re-evaluated)" if audience["reevaluated"] else " (nothing re-evaluated)"
        lines.append(f"audience {audience['name']}: {audience['status']}{note}")
        if audience["old_condition"] != audience["new_condition"]:
            if audience["old_condition"] is not None:
                lines.append(f"    - {audience['old_condition']}")
            if audience["new_condition"] is not None:
                lines.append(f"    + {audience['new_condition']}")
    for kind in ("cutoffs", "scores"):
        for change in diff[kind]:
            lines.append(
                f"{kind[:-1].replace('cutoff', 'cut-off')} {change['name']}: {change['status']}"
            )
    lines.extend(["", diff["text"].rstrip("\n")])
    return "\n".join(lines)


def progress_line(preview: Mapping[str, Any]) -> str:
    progress = preview["progress"]
    total = progress["total"]
    counted = f"{progress['done']}/{total} customers" if total is not None else "not started"
    return f"preview {preview['id']}: {preview['status']}, {counted}"


def preview_text(result: Mapping[str, Any]) -> str:
    """Sizes now and under the candidate per dimension, then the moves with samples."""
    lines = [
        f"{result['customers']} customers as of {result['as_of']},"
        f" against version {result['base_version']}"
    ]
    audiences = [("audience ", entry) for entry in result.get("audiences") or []]
    for kind, dimension in [*(("", entry) for entry in result["dimensions"]), *audiences]:
        lines.extend(["", f"{kind}{dimension['name']} ({dimension['status']})"])
        segments = dimension.get("segments") or []
        if segments:
            lines.append(
                table(
                    ("segment", "now", "candidate", "change"),
                    (
                        (s["name"], s["now"], s["candidate"], _signed(s["candidate"] - s["now"]))
                        for s in segments
                    ),
                )
            )
        moves = [m for m in dimension.get("transitions") or [] if m["customers"]]
        if moves:
            lines.append("moves:")
        for move in moves:
            lines.append(
                f"  {move['from'] or '(none)'} -> {move['to'] or '(none)'}:"
                f" {move['customers']} customers"
            )
            for sample in move.get("samples") or []:
                lines.append(f"    {sample['customer_id']}: {sample['reason']}")
    return "\n".join(lines)


def _signed(delta: int) -> str:
    return f"+{delta}" if delta > 0 else str(delta)
