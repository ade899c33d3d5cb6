"""``POST /v1/rerank`` of our transformers worker, in vLLM's shape (what the gateway sends to every
OpenAI-compatible backend): pure, no torch.

Request ``{model?, query, documents: [str | {text}], top_n? (0 or absent: all), return_documents?,
max_tokens_per_doc?}``; answer ``{id, object: "list", model, usage: {prompt_tokens, total_tokens},
results: [{index, relevance_score, document?: {text}}]}``, best first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from superollama.runtimes._request_error import RequestError

__all__ = ["RerankParams", "parse_rerank", "rerank_response"]


@dataclass(frozen=True)
class RerankParams:
    query: str
    documents: tuple[str, ...]
    top_n: int | None = None
    return_documents: bool = False
    max_tokens_per_doc: int | None = None


def _int(body: Mapping[str, Any], key: str, lo: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise RequestError(f"'{key}' must be an integer >= {lo}", param=key)
    return value


def _text(item: Any, i: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping) and isinstance(item.get("text"), str):
        return str(item["text"])
    raise RequestError(f"documents[{i}] must be a string or an object with 'text'", param="documents")


def parse_rerank(raw: Any) -> RerankParams:
    if not isinstance(raw, Mapping):
        raise RequestError("the request body must be a JSON object")
    query = raw.get("query")
    if not isinstance(query, str) or not query:
        raise RequestError("'query' must be a non-empty string", param="query")
    docs = raw.get("documents")
    if not isinstance(docs, list) or not docs:
        raise RequestError("'documents' must be a non-empty list", param="documents")
    returning = raw.get("return_documents", False)
    if not isinstance(returning, bool):
        raise RequestError("'return_documents' must be a boolean", param="return_documents")
    return RerankParams(
        query=query,
        documents=tuple(_text(d, i) for i, d in enumerate(docs)),
        top_n=_int(raw, "top_n", 0) or None,
        return_documents=returning,
        max_tokens_per_doc=_int(raw, "max_tokens_per_doc", 1),
    )


def rerank_response(
    response_id: str, model: str, params: RerankParams, scores: Sequence[float], tokens: int
) -> dict[str, Any]:
    best = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if params.top_n is not None:
        best = best[: params.top_n]
    results: list[dict[str, Any]] = []
    for i in best:
        result: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if params.return_documents:
            result["document"] = {"text": params.documents[i]}
        results.append(result)
    return {
        "id": response_id,
        "object": "list",
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "results": results,
    }
