"""The committed JSON Schema files and the docs examples must match the code."""

import json
import re
import uuid
from pathlib import Path
from typing import Any, get_args

import pytest

from shared.events import (
    CUSTOMER_EVENT_TYPES,
    decode_customer_event,
    decode_event,
    decode_segment_change,
    limits,
)
from shared.events.definitions_activated import (
    DEFINITIONS_ACTIVATED_TYPE,
    decode_definitions_activated,
)
from shared.events.fields import SchemaVersion
from shared.events.import_completed import IMPORT_COMPLETED_TYPE, decode_import_completed
from shared.events.schema_export import build_schemas, render, write_schemas

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = build_schemas()
JSON_BLOCK = re.compile(r"```json\n(.*?)```", re.DOTALL)


@pytest.mark.parametrize("file_name", sorted(SCHEMAS))
def test_committed_schema_matches_the_export(file_name: str) -> None:
    committed = (ROOT / "schemas" / file_name).read_text(encoding="utf-8")

    assert committed == render(SCHEMAS[file_name]), (
        f"schemas/{file_name} is stale: run `python -m shared.events.schema_export`"
    )


def test_no_schema_file_is_left_over() -> None:
    assert {path.name for path in (ROOT / "schemas").glob("*.json")} == set(SCHEMAS)


def test_export_writes_every_file(tmp_path: Path) -> None:
    written = write_schemas(tmp_path / "out")

    assert sorted(path.name for path in written) == sorted(SCHEMAS)


def test_schema_carries_the_constraints_msgspec_does_not_enforce() -> None:
    order_placed = SCHEMAS["order_event.v1.json"]["$defs"]["OrderPlaced"]["properties"]

    assert order_placed["event_id"]["pattern"] == limits.ID_PATTERN
    assert order_placed["currency"]["pattern"] == limits.CURRENCY_PATTERN
    assert {branch["type"] for branch in order_placed["amount"]["anyOf"]} == {"number", "string"}


def test_customer_schema_lists_the_countries_and_the_custom_value_types() -> None:
    defs = SCHEMAS["customer_event.v1.json"]["$defs"]["Traits"]["properties"]

    assert "DE" in defs["country"]["enum"]
    assert "UK" not in defs["country"]["enum"]
    custom = defs["custom"]["additionalProperties"]["anyOf"]
    assert {branch["type"] for branch in custom} == {
        "string",
        "integer",
        "number",
        "boolean",
        "array",
    }


def test_schema_version_literal_matches_the_constant() -> None:
    assert get_args(SchemaVersion) == (limits.SCHEMA_VERSION,)


def _docs_examples() -> list[Any]:
    text = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    return [json.loads(block) for block in JSON_BLOCK.findall(text)]


def test_docs_have_an_example_of_each_family() -> None:
    kinds = {example.get("specversion", example["type"]) for example in _docs_examples()}

    assert {"order_placed", "product_view", "customer_traits", "1.0"} <= kinds


@pytest.mark.parametrize("example", _docs_examples())
def test_docs_example_decodes(example: dict[str, Any]) -> None:
    raw = json.dumps(example).encode()
    if example.get("type") in CUSTOMER_EVENT_TYPES:
        assert decode_customer_event(raw).type == example["type"]
        return
    if "specversion" not in example:
        assert decode_event(raw).type == example["type"]
        return
    if example["type"] == DEFINITIONS_ACTIVATED_TYPE:
        summary = decode_definitions_activated(raw)
        assert summary.data.moved == sum(t.customers for t in summary.data.transitions)
        return
    if example["type"] == IMPORT_COMPLETED_TYPE:
        completed = decode_import_completed(raw)
        assert completed.data.moved == sum(t.customers for t in completed.data.transitions)
        return
    event = decode_segment_change(raw)
    # The id is recorded with the change and derived from the customer's incarnation, which
    # the event does not carry: what a consumer can check is that it is a UUIDv5.
    assert uuid.UUID(event.id).version == 5
