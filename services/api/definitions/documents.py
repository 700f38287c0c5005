"""The definitions document of a request: its media type and text, and its problems as a
422 naming every one."""

from __future__ import annotations

import json
from typing import Any

import yaml

from services.api.definitions.parsing import DefinitionsParser
from services.api.errors import ApiError
from shared.definitions.activation import RetentionRows
from shared.segmentation import DefinitionError, Definitions, Problem

YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/plain"})
JSON_TYPE = "application/json"


def read_document(content_type: str | None, body: bytes) -> str:
    """The definitions text of a request body: YAML as sent, or a JSON object written out
    as YAML (so that the one loader reads both, and numbers keep YAML's reading)."""
    media, _, parameters = (content_type or "").partition(";")
    media = media.strip().lower()
    if media not in YAML_TYPES and media != JSON_TYPE:
        accepted = ", ".join(sorted(YAML_TYPES | {JSON_TYPE}))
        sent = f"not {media}" if media else "with that Content-Type"
        raise ApiError(
            415, "unsupported_media_type", f"send the definitions as one of {accepted}, {sent}"
        )
    charset = _charset(parameters)
    if charset not in (None, "utf-8", "utf8", "us-ascii"):
        raise ApiError(415, "unsupported_media_type", f"the body must be UTF-8, not {charset}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, "invalid_body", f"the body is not UTF-8 text (byte {exc.start} is not)"
        ) from None
    return text if media != JSON_TYPE else _json_as_yaml(text)


def _charset(parameters: str) -> str | None:
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def _json_as_yaml(text: str) -> str:
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        # json keeps the last of two equal keys without a word; YAML input reports them.
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    too_deep = "the document nests too deeply to be definitions"
    try:
        # json, not orjson: only json has a hook that sees every key of an object.
        data = json.loads(text, object_pairs_hook=pairs)
    except ValueError as exc:
        raise invalid([f"JSON syntax error: {exc}"]) from None
    except RecursionError:
        raise invalid([too_deep]) from None
    if duplicates:
        raise invalid([f"duplicate key {key!r} in the JSON document" for key in duplicates])
    try:
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    except RecursionError:
        raise invalid([too_deep]) from None


def invalid(messages: list[str]) -> ApiError:
    """422 for problems found before the loader could see the document."""
    return invalid_definitions(
        DefinitionError([Problem(None, None, message) for message in messages])
    )


def invalid_definitions(error: DefinitionError) -> ApiError:
    """422 with every problem, each with its dimension and rule."""
    problems = [
        {"dimension": p.dimension, "rule": p.rule, "message": p.message} for p in error.problems
    ]
    count = len(problems)
    return ApiError(
        422,
        "invalid_definitions",
        f"{count} problem{'s' if count != 1 else ''}",
        problems=problems,
    )


async def load(parser: DefinitionsParser, text: str, retention: RetentionRows = ()) -> Definitions:
    """Parsed and validated (against `retention` for a candidate), or 422 with every
    problem the loader found."""
    try:
        return await parser.parse(text, retention)
    except DefinitionError as exc:
        raise invalid_definitions(exc) from None
