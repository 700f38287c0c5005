"""The independent checker: every difference between the expected final state
(tests/chaos/expected.py, from the input alone) and what the pipeline stored, published and
serves, by category, with examples.

Like expected.py it imports nothing from services/ or shared/: it reads JSON answers, rows
and the change topic's records as plain values.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tests.chaos.expected import Expected

EXAMPLES = 5


@dataclass
class Findings:
    """Mismatches by category, each with a count and the first few examples."""

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, category: str, example: str) -> None:
        self.counts[category] += 1
        if len(self.examples[category]) < EXAMPLES:
            self.examples[category].append(example)

    def as_dict(self) -> dict[str, Any]:
        return {
            c: {"count": n, "examples": self.examples[c]} for c, n in sorted(self.counts.items())
        }


def _parse_time(raw: Any) -> datetime | None:
    return None if raw is None else datetime.fromisoformat(raw).astimezone(UTC)


AGGREGATE_FIELDS = (
    "order_count",
    "net_spend",
    "spend_365d",
    "orders_365d",
    "first_order_at",
    "last_order_at",
    "interaction_count",
    "interactions_30d",
    "last_interaction_at",
    "open_cart_at",
)


def _aggregate_diffs(want: Mapping[str, Any], got: Mapping[str, Any] | None) -> list[str]:
    if got is None:
        return ["aggregates: none"]
    diffs = []
    for name in AGGREGATE_FIELDS:
        raw = got.get(name)
        if name.endswith("_at"):
            value: Any = _parse_time(raw)
        elif name in ("net_spend", "spend_365d"):
            value = Decimal(str(raw))
        else:
            value = raw
        if value != want[name]:
            diffs.append(f"{name}: expected {want[name]}, got {value}")
    return diffs


def _classify_aggregates(want: Mapping[str, Any], got: Mapping[str, Any]) -> str:
    counts = ("order_count", "interaction_count")
    if any(got.get(n, 0) < want[n] for n in counts):
        return "aggregates_lost"
    if any(got.get(n, 0) > want[n] for n in counts):
        return "aggregates_doubled"
    return "aggregates_wrong"


def compare_api(
    findings: Findings,
    expected: Expected,
    answers: Mapping[str, Mapping[str, Any]],
    source: str,
    definition_version: int | None,
) -> None:
    """The API's answers (`source`: cache or database) against the expected final state."""
    for cid in sorted(set(expected.segments) | set(answers)):
        got = answers.get(cid)
        if cid not in expected.segments:
            findings.add(f"api_{source}_erased_customer_served", cid)
            continue
        if got is None:
            findings.add(f"api_{source}_customer_missing", cid)
            continue
        segs = {d: s["segment"] for d, s in got.get("segments", {}).items()}
        if segs != expected.segments[cid]:
            findings.add(
                f"api_{source}_wrong_segments",
                f"{cid}: expected {expected.segments[cid]}, got {segs} (from {got.get('source')})",
            )
        if definition_version is not None and got.get("definition_version") != definition_version:
            findings.add(
                f"api_{source}_old_definitions",
                f"{cid}: definition_version {got.get('definition_version')}",
            )
        diffs = _aggregate_diffs(expected.aggregates[cid], got.get("aggregates"))
        if diffs:
            agg = got.get("aggregates") or {}
            category = (
                _classify_aggregates(expected.aggregates[cid], agg)
                if source == "database"
                else "api_cache_stale_aggregates"
            )
            findings.add(category, f"{cid} (from {got.get('source')}): " + "; ".join(diffs))


def compare_database_segments(
    findings: Findings, expected: Expected, stored: Mapping[str, Mapping[str, str]]
) -> None:
    for cid in sorted(set(expected.segments) | set(stored)):
        if cid not in expected.segments:
            findings.add("segments_of_erased_or_unknown_customer", f"{cid}: {stored[cid]}")
        elif cid not in stored:
            findings.add("segments_missing", cid)
        elif dict(stored[cid]) != expected.segments[cid]:
            findings.add(
                "segments_wrong",
                f"{cid}: expected {expected.segments[cid]}, got {dict(stored[cid])}",
            )


def compare_changes(
    findings: Findings,
    history: list[dict[str, Any]],
    published: list[tuple[int, int, bytes]],
    erased_customers: set[str],
) -> dict[str, int]:
    """The change topic against segment_history: every row exactly once (after dedup by
    id), no id reused for other content, and each customer's changes in sequence order."""
    # Every distinct content each id was published with, and where it first appeared.
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    first_at: dict[tuple[str, str], tuple[int, int]] = {}
    raw_records = 0
    for partition, offset, value in sorted(published):
        raw_records += 1
        try:
            doc = json.loads(value)
            change_id, data = str(doc["id"]), doc["data"]
        except (ValueError, KeyError, TypeError):
            findings.add("change_undecodable", f"segment-changes[{partition}]@{offset}")
            continue
        if data in by_id[change_id]:
            continue
        if by_id[change_id]:
            findings.add(
                "change_id_reused",
                f"{change_id} ({data.get('customer_id')}): {by_id[change_id][0]} then {data}",
            )
        by_id[change_id].append(data)
        first_at[(change_id, _content_key(data))] = (partition, offset)
    rows = {str(r["change_id"]): r for r in history}
    found_at: dict[str, tuple[int, int]] = {}
    for change_id, r in sorted(
        rows.items(), key=lambda kv: (kv[1]["customer_id"], kv[1]["sequence"])
    ):
        versions = by_id.get(change_id, [])
        if not versions:
            findings.add(
                "history_row_not_published",
                f"{r['customer_id']} {r['dimension']} seq {r['sequence']}: {change_id}",
            )
            continue
        matching = [d for d in versions if _same_change(d, r)]
        if not matching:
            findings.add(
                "history_row_published_differently",
                f"{change_id}: row {r['from_segment']}->{r['to_segment']} seq {r['sequence']},"
                f" topic {[(d.get('from_segment'), d.get('to_segment')) for d in versions]}",
            )
            continue
        # After an erasure an id may be reused for identical content: the later one is ours.
        found_at[change_id] = max(first_at[(change_id, _content_key(d))] for d in matching)
    for change_id, versions in by_id.items():
        for data in versions:
            if change_id not in rows and data.get("customer_id") not in erased_customers:
                findings.add(
                    "published_change_without_history_row",
                    f"{change_id} {data.get('customer_id')} seq {data.get('sequence')}",
                )
    # Order per customer: the current history rows, in topic order, have rising sequences.
    per_customer: dict[str, list[tuple[tuple[int, int], int]]] = defaultdict(list)
    for change_id, r in rows.items():
        if change_id in found_at:
            per_customer[r["customer_id"]].append((found_at[change_id], r["sequence"]))
    for cid, items in per_customer.items():
        sequences = [s for _, s in sorted(items)]
        if sequences != sorted(sequences) or len({p for (p, _), _ in items}) > 1:
            findings.add("change_order_violated", f"{cid}: sequences in topic order {sequences}")
    # Each dimension's chain: every change starts where the previous one ended.
    chains: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in history:
        chains[(r["customer_id"], r["dimension"])].append(r)
    for (cid, dim), chain in chains.items():
        chain.sort(key=lambda r: r["sequence"])
        for before, after in itertools.pairwise(chain):
            if after["from_segment"] != before["to_segment"]:
                findings.add(
                    "history_chain_broken",
                    f"{cid} {dim}: seq {before['sequence']} ->{before['to_segment']},"
                    f" seq {after['sequence']} {after['from_segment']}->",
                )
    return {
        "change_records": raw_records,
        "distinct_change_ids": len(by_id),
        "distinct_changes": sum(len(v) for v in by_id.values()),
    }


def _same_change(data: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
    """A published change and a history row say the same thing."""
    caused = data.get("caused_by_event_time")
    return bool(
        data.get("from_segment") == row["from_segment"]
        and data.get("to_segment") == row["to_segment"]
        and data.get("sequence") == row["sequence"]
        and data.get("reason") == row["reason"]
        and data.get("definition_version") == row["definition_version"]
        and _parse_time(caused) == row["caused_by_event_at"]
    )


def _content_key(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True)


def compare_history_with_segments(
    findings: Findings, history: list[dict[str, Any]], stored: Mapping[str, Mapping[str, str]]
) -> None:
    """The last change of each dimension ends in the customer's current segment."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for r in history:
        key = (r["customer_id"], r["dimension"])
        if key not in last or r["sequence"] > last[key]["sequence"]:
            last[key] = r
    for cid, segs in stored.items():
        for dim, seg in segs.items():
            final = last.get((cid, dim))
            if final is None or final["to_segment"] != seg:
                findings.add(
                    "history_disagrees_with_segment",
                    f"{cid} {dim}: segment {seg}, last change to "
                    f"{None if final is None else final['to_segment']}",
                )
    # A last change into a segment with no segment stored: an exit (a removed dimension)
    # ends with to_segment null instead.
    for (cid, dim), final in sorted(last.items()):
        if final["to_segment"] is not None and dim not in stored.get(cid, {}):
            findings.add(
                "history_without_segment",
                f"{cid} {dim}: last change to {final['to_segment']}, no segment stored",
            )


def compare_dead_letters(
    findings: Findings, expected: Expected, dead: Iterable[tuple[str, int, int]]
) -> None:
    """Every rejected record dead-lettered (at least once), and no accepted one."""
    dead_set = set(dead)
    for where in sorted(expected.rejected_at - dead_set):
        findings.add("dead_letter_missing", f"{where[0]}[{where[1]}]@{where[2]}")
    for where in sorted(dead_set - expected.rejected_at):
        findings.add("dead_letter_of_a_valid_record", f"{where[0]}[{where[1]}]@{where[2]}")
