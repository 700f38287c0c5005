"""Parsing definitions in the API process: off the event loop, and one document at a time."""

from __future__ import annotations

import asyncio

from starlette.concurrency import run_in_threadpool

from shared.definitions.activation import RetentionRows, parse_stored
from shared.segmentation import Definitions


class DefinitionsParser:
    """Loading checks coverage in pure Python: a large document costs seconds of CPU (one of
    26 KB with 60 sampled dimensions, over 10 s). In a worker thread the event loop keeps
    serving, but the thread holds the GIL whenever it runs, so each parse at once slows
    every other request more; one at a time bounds that, and later ones wait their turn.
    Results are cached by content (`parse_stored`), so the activation that follows a
    validation or a preview of the same content is a lookup."""

    def __init__(self) -> None:
        self._one_at_a_time = asyncio.Semaphore(1)

    async def parse(self, content: str, retention: RetentionRows = ()) -> Definitions:
        """The definitions, or DefinitionError with every problem; `retention` for a
        candidate (what ingest keeps, `repository.ingest_retention`)."""
        async with self._one_at_a_time:
            return await run_in_threadpool(parse_stored, content, retention)
