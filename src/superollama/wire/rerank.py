"""Rerank wire edge: Cohere's ``/v2/rerank``, the Jina/Cohere-v1 ``/v1/rerank`` that vLLM, llama.cpp and
LiteLLM serve, and the two shapes backends answer in. Pure functions, no I/O.

Client requests (both paths)::

    {"model": str, "query": str, "documents": [str | {"text": str}], "top_n"?: int,
     "return_documents"?: bool, "max_tokens_per_doc"?: int}

``top_n`` absent or 0 (vLLM's "all") returns every document; ``return_documents`` (default false) adds
``document: {"text"}`` to each result. Results are sorted by descending ``relevance_score``.

Answers: ``/v2/rerank`` is Cohere v2's ``{id, results: [{index, relevance_score, document?}], meta}``;
``/v1/rerank`` is the same plus ``model`` and ``usage`` (vLLM/Jina clients read those, Cohere v1 clients
read ``meta``). ``meta.billed_units.search_units`` follows Cohere: one unit per query over up to 100
documents.

Backend dialects: ``jina`` is what an OpenAI-compatible server takes on ``/v1/rerank`` (vLLM, llama.cpp's
server, our transformers worker): the client's fields, answered ``{results: [{index, relevance_score}],
usage}``; ``tei`` is Hugging Face text-embeddings-inference's ``POST /rerank``: ``{query, texts,
return_text, raw_scores, truncate}`` answered by a bare ``[{index, score, text?}]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from superollama.errors import InvalidRequest

__all__ = [
    "DOCUMENTS_PER_SEARCH_UNIT",
    "MAX_DOCUMENTS",
    "Ranked",
    "RerankRequest",
    "admission_body",
    "backend_body",
    "ordered",
    "parse",
    "parse_backend",
    "render",
    "search_units",
]

Dialect = Literal["jina", "tei"]
Api = Literal["v1", "v2"]

MAX_DOCUMENTS = 10_000  # Cohere recommends at most 1,000; past this a request is a mistake, not a search
DOCUMENTS_PER_SEARCH_UNIT = 100


@dataclass(frozen=True)
class RerankRequest:
    model: str
    query: str
    documents: tuple[str, ...]
    top_n: int | None = None  # None: every document
    return_documents: bool = False
    max_tokens_per_doc: int | None = None


@dataclass(frozen=True)
class Ranked:
    """A backend's verdict: ``(index, score)`` pairs (any order) and the tokens it read, if it said."""

    scores: tuple[tuple[int, float], ...]
    tokens: int | None = None


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _int(body: Mapping[str, Any], name: str, least: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"'{name}' must be an integer, not {type(value).__name__}", name)
    if value < least:
        raise _bad(f"'{name}' must be at least {least}, got {value}", name)
    return value


def _document(item: Any, i: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping) and isinstance(item.get("text"), str):
        return str(item["text"])
    raise _bad(f"documents[{i}] must be a string or an object with a string 'text'", "documents")


def parse(body: Mapping[str, Any]) -> RerankRequest:
    """A client's rerank request, or a 400 naming the field that is wrong."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required: the name of a rerank model", "model")
    query = body.get("query")
    if not isinstance(query, str):
        raise _bad("'query' is required and must be a string", "query")
    if not query.strip():
        raise _bad("'query' must not be empty", "query")
    docs = body.get("documents")
    if not isinstance(docs, list):
        raise _bad("'documents' is required: a list of strings (or of objects with 'text')", "documents")
    if not docs:
        raise _bad("'documents' must not be empty", "documents")
    if len(docs) > MAX_DOCUMENTS:
        raise _bad(f"'documents' has {len(docs)} items; at most {MAX_DOCUMENTS} per request", "documents")
    returning = body.get("return_documents", False)
    if not isinstance(returning, bool):
        raise _bad("'return_documents' must be a boolean", "return_documents")
    if body.get("relevant_spans") not in (None, False):
        raise _bad("'relevant_spans' is not supported by this server", "relevant_spans")
    top_n = _int(body, "top_n", 0)
    return RerankRequest(
        model=model,
        query=query,
        documents=tuple(_document(d, i) for i, d in enumerate(docs)),
        top_n=top_n or None,
        return_documents=returning,
        max_tokens_per_doc=_int(body, "max_tokens_per_doc", 1),
    )


def search_units(req: RerankRequest) -> int:
    """Cohere's billing unit: one query over up to 100 documents."""
    return max(1, math.ceil(len(req.documents) / DOCUMENTS_PER_SEARCH_UNIT))


def backend_body(req: RerankRequest, served_name: str, dialect: Dialect) -> dict[str, Any]:
    """What the backend is sent. Every result is asked for (``top_n`` is applied here, after the scores:
    the same answer whatever the backend does with it); texts are not asked back (we have them)."""
    if dialect == "tei":
        return {"query": req.query, "texts": list(req.documents), "truncate": True, "return_text": False}
    body: dict[str, Any] = {
        "model": served_name,
        "query": req.query,
        "documents": list(req.documents),
        "top_n": len(req.documents),
        "return_documents": False,
    }
    if req.max_tokens_per_doc is not None:
        body["max_tokens_per_doc"] = req.max_tokens_per_doc
    return body


def _score(item: Any, key: str, count: int) -> tuple[int, float] | None:
    if not isinstance(item, Mapping):
        return None
    index, score = item.get("index"), item.get(key)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        return None
    if not isinstance(score, int | float) or isinstance(score, bool) or not math.isfinite(score):
        return None
    return index, float(score)


def parse_backend(answer: Any, dialect: Dialect, count: int) -> Ranked | None:
    """The scores in a backend's answer to ``count`` documents, or None if it is not a rerank answer."""
    if dialect == "tei":
        items, key, usage = answer, "score", None
    elif isinstance(answer, Mapping):
        items, key, usage = answer.get("results"), "relevance_score", answer.get("usage")
    else:
        return None
    if not isinstance(items, list):
        return None
    scores = [_score(item, key, count) for item in items]
    if any(s is None for s in scores) or len({s[0] for s in scores if s}) != len(scores):
        return None
    tokens = None
    if isinstance(usage, Mapping):
        value = usage.get("prompt_tokens", usage.get("total_tokens"))
        tokens = value if isinstance(value, int) and not isinstance(value, bool) else None
    return Ranked(tuple(s for s in scores if s is not None), tokens)


def ordered(req: RerankRequest, ranked: Ranked) -> list[tuple[int, float]]:
    """Best first (ties: the earlier document first), cut to ``top_n``."""
    best = sorted(ranked.scores, key=lambda s: (-s[1], s[0]))
    return best if req.top_n is None else best[: req.top_n]


def render(
    req: RerankRequest,
    ranked: Ranked,
    *,
    api: Api,
    response_id: str,
    tokens: int | None,
) -> dict[str, Any]:
    """The client's answer: Cohere v2's shape, and for ``/v1`` also ``model`` and ``usage``."""
    results: list[dict[str, Any]] = []
    for index, score in ordered(req, ranked):
        result: dict[str, Any] = {"index": index, "relevance_score": score}
        if req.return_documents:
            result["document"] = {"text": req.documents[index]}
        results.append(result)
    meta: dict[str, Any] = {
        "api_version": {"version": "2" if api == "v2" else "1", "is_experimental": False},
        "billed_units": {"search_units": search_units(req)},
    }
    if tokens is not None:
        meta["tokens"] = {"input_tokens": tokens, "output_tokens": 0}
    out: dict[str, Any] = {"id": response_id, "results": results, "meta": meta}
    if api == "v1":
        out["model"] = req.model
        out["usage"] = {"prompt_tokens": tokens or 0, "total_tokens": tokens or 0}
    return out


def admission_body(req: RerankRequest) -> dict[str, Any]:
    """The request as the admission estimate reads it: a cross-encoder reads the query with each document."""
    return {"model": req.model, "input": [req.query] * len(req.documents) + list(req.documents)}
