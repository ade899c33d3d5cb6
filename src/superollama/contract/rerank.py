"""Rerank (``/v1/rerank``, ``/v2/rerank``): Cohere v2's shape, and on ``/v1`` also Jina's and vLLM's
``model`` and ``usage``. Errors in OpenAI's envelope (the gateway's error middleware). What the route
parses is ``wire.rerank.parse``; the body here says the same."""

from __future__ import annotations

from superollama.contract.model import (
    JSON,
    Family,
    Operation,
    Reply,
    Schema,
    array,
    boolean,
    integer,
    number,
    obj,
    string,
)
from superollama.wire.rerank import MAX_DOCUMENTS

__all__ = ["OPERATIONS"]

TAG = "Rerank"

_BODY = obj(
    ("model", "query", "documents"),
    model=string(minLength=1, description="a rerank (cross-encoder) model, deployment or connection model"),
    query=string(minLength=1, pattern=r"\S"),
    documents=array(
        {"anyOf": [string(), obj(("text",), text=string())]},
        minItems=1,
        maxItems=MAX_DOCUMENTS,
        description="the texts to rank: strings, or objects with a string 'text'",
    ),
    top_n=integer(minimum=0, description="at most this many results; absent or 0: all"),
    return_documents=boolean(),
    max_tokens_per_doc=integer(minimum=1),
    relevant_spans={"const": False, "description": "not supported: absent or false"},
)
_META = obj(
    ("api_version", "billed_units"),
    api_version=obj(("version",), version=string(), is_experimental=boolean()),
    billed_units=obj(("search_units",), search_units=integer(minimum=1)),
    tokens=obj(input_tokens=integer(minimum=0), output_tokens=integer(minimum=0)),
)
_RESULT = obj(
    ("index", "relevance_score"),
    index=integer(minimum=0),
    relevance_score=number(),
    document=obj(("text",), text=string()),
)


def _answer(v1: bool) -> Schema:
    fields: dict[str, Schema] = {"id": string(), "results": array(_RESULT), "meta": _META}
    if v1:
        fields["model"] = string()
        fields["usage"] = obj(
            ("prompt_tokens", "total_tokens"),
            prompt_tokens=integer(minimum=0),
            total_tokens=integer(minimum=0),
        )
    return obj(("id", "results", "meta", *(("model", "usage") if v1 else ())), **fields)


OPERATIONS = (
    Operation(
        "POST",
        "/v1/rerank",
        "Rerank documents against a query (Jina, vLLM and Cohere v1 clients)",
        TAG,
        Family.OPENAI,
        {200: Reply("The documents best first, cut to top_n", {JSON: _answer(v1=True)})},
        body=_BODY,
        upstream=True,
        description="A model that is not served as a reranker, or a backend without a rerank API "
        "(Ollama), answers 400 naming the model.",
    ),
    Operation(
        "POST",
        "/v2/rerank",
        "Rerank documents against a query (Cohere v2)",
        TAG,
        Family.OPENAI,
        {200: Reply("The documents best first, cut to top_n", {JSON: _answer(v1=False)})},
        body=_BODY,
        upstream=True,
    ),
)
