"""Request bodies that endpoints read themselves (msgspec structs over the event contracts),
described in the OpenAPI document by their JSON Schema."""

from __future__ import annotations

from typing import Any

import msgspec


def request_body(body: Any, example: Any) -> dict[str, Any]:
    """The `openapi_extra` of an endpoint that reads `body` (a msgspec type) itself: its JSON
    Schema, with the contract's definitions inlined (OpenAPI resolves no `$defs` of a
    request body), and `example`."""
    return schema_body(msgspec.json.schema(body), example)


def schema_body(schema: dict[str, Any], example: Any) -> dict[str, Any]:
    """As `request_body`, from a JSON Schema whose definitions are under `$defs`."""
    schema = dict(schema)
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    content = {"schema": inline(schema), "example": example}
    return {"requestBody": {"required": True, "content": {"application/json": content}}}
