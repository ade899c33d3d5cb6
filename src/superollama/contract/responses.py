"""OpenAI's Responses API (``/v1/responses*``). Errors in OpenAI's envelope."""

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
    boolean,
    integer,
    nullable,
    obj,
    sse_event,
    string,
)

__all__ = ["OPERATIONS"]

TAG = "Responses"
_ID = (Param("id", "path", string(minLength=1), "the response's id", required=True),)
_RESPONSE = obj(
    ("id", "object", "created_at", "status", "model", "output"),
    id=string(),
    object=string(const="response"),
    created_at=integer(),
    status=string(),
    model=string(),
    output=array(obj(("type",), type=string())),
    previous_response_id=nullable(string()),
    usage=nullable(obj()),
)

_EVENTS = sse_event("a Responses API stream event, as JSON")

OPERATIONS = (
    Operation(
        "POST",
        "/v1/responses",
        "Create a response (semantic events with stream: true; stored unless store: false)",
        TAG,
        Family.OPENAI,
        {
            200: Reply(
                "The response, or its events",
                {JSON: _RESPONSE, SSE: _EVENTS},
            )
        },
        # the schema of the model the route parses with
        body=ModelSchema("superollama.wire.responses", "ResponsesRequest", "Responses"),
        upstream=True,
    ),
    Operation(
        "GET",
        "/v1/responses/{id}",
        "A stored response",
        TAG,
        Family.OPENAI,
        {200: Reply("The response", {JSON: _RESPONSE})},
        params=_ID,
    ),
    Operation(
        "DELETE",
        "/v1/responses/{id}",
        "Delete a stored response",
        TAG,
        Family.OPENAI,
        {
            200: Reply(
                "Deleted",
                {JSON: obj(("id", "object", "deleted"), id=string(), object=string(), deleted=boolean())},
            )
        },
        params=_ID,
    ),
)
