"""The Responses API's ``file_search`` tool over our vector stores: the search of
``POST /v1/vector_stores/{id}/search`` (the same key rules: a store of another key does not exist, 404),
over every store the tool names, merged best first; the sources go to the model in grounded chat's
prompt template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from superollama.plugins.rag.grounding import sources_prompt
from superollama.plugins.rag.service import VectorStores
from superollama.plugins.rag.vectors import compile_filter
from superollama.wire import responses as wire

if TYPE_CHECKING:
    from superollama.wire.responses import FileSearchTool, Found

__all__ = ["DEFAULT_MAX_RESULTS", "FileSearcher"]

DEFAULT_MAX_RESULTS = 10  # as /v1/vector_stores/{id}/search


class FileSearcher:
    def __init__(self, stores: VectorStores) -> None:
        self._stores = stores

    async def search(
        self, tool: FileSearchTool, queries: Sequence[str], *, key_id: str | None
    ) -> list[Found]:
        where = compile_filter(tool.filters, "tools.filters") if tool.filters is not None else None
        options = tool.ranking_options
        threshold = None if options is None or options.score_threshold is None else options.score_threshold
        k = tool.max_num_results or DEFAULT_MAX_RESULTS
        stores = [await self._stores.get(store_id, key_id=key_id) for store_id in tool.vector_store_ids]
        if not queries:  # nothing to search for (no user text), but the tool was checked
            return []
        hits = []
        for store in stores:
            hits += await self._stores.search(store, queries, k, where, threshold)
        best = sorted(hits, key=lambda h: -h.score)[:k]
        return [wire.Found(h.file_id, h.filename, h.score, h.text, dict(h.attributes)) for h in best]

    def prompt(self, question: str, found: Sequence[Found]) -> str:
        return sources_prompt(None, question, [(f.filename, f.text) for f in found])
