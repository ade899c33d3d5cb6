"""The Anthropic Messages API (``/v1/messages*``). Errors: ``{"type": "error", "error": {type, message}}``."""

from __future__ import annotations

from superollama.contract.model import (
    JSON,
    SSE,
    Family,
    ModelSchema,
    Operation,
    Param,
    Reply,
    array,
    integer,
    nullable,
    obj,
    sse_event,
    string,
)

__all__ = ["OPERATIONS"]

TAG = "Anthropic"
_HEADERS = (
    Param("x-api-key", "header", string(), "an API key (instead of Authorization: Bearer)"),
    Param("anthropic-version", "header", string(), "accepted and ignored"),
)
_BLOCK = obj(("type",), type=string())
_MESSAGE_OBJECT = obj(
    ("id", "type", "role", "content", "model", "usage"),
    id=string(),
    type=string(const="message"),
    role=string(const="assistant"),
    content=array(_BLOCK),
    model=string(),
    stop_reason=nullable(string()),
    stop_sequence=nullable(string()),
    usage=obj(("input_tokens", "output_tokens"), input_tokens=integer(), output_tokens=integer()),
)

_EVENTS = sse_event("one of Anthropic's stream events, as JSON")

OPERATIONS = (
    Operation(
        "POST",
        "/v1/messages",
        "Create a message (streamed as Anthropic's events with stream: true)",
        TAG,
        Family.ANTHROPIC,
        {
            200: Reply(
                "The message, or its events",
                {JSON: _MESSAGE_OBJECT, SSE: _EVENTS},
            )
        },
        # the schema of the model the route parses with
        body=ModelSchema("superollama.wire.anthropic", "MessagesRequest", "Anthropic"),
        params=_HEADERS,
        upstream=True,
    ),
    Operation(
        "POST",
        "/v1/messages/count_tokens",
        "Count the input tokens of a message request",
        TAG,
        Family.ANTHROPIC,
        {200: Reply("The count", {JSON: obj(("input_tokens",), input_tokens=integer(minimum=0))})},
        body=ModelSchema("superollama.wire.anthropic", "CountTokensRequest", "Anthropic"),
        params=_HEADERS,
        upstream=True,
    ),
)
