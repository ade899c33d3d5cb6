"""OpenAI's Batch API (``/v1/batches*``): a JSONL file of requests (``/v1/files``, purpose ``batch``) run
in the background; results and errors as files. Errors in OpenAI's envelope."""

from __future__ import annotations

from superollama.contract.model import (
    JSON,
    Family,
    Operation,
    Param,
    Reply,
    array,
    boolean,
    integer,
    nullable,
    obj,
    string,
)

__all__ = ["OPERATIONS"]

TAG = "Batches"
ENDPOINTS = ["/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses"]
STATUSES = [
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]

_ID = (Param("id", "path", string(minLength=1), "the batch's id", required=True),)
_STAMP = nullable(integer())
_BATCH = obj(
    ("id", "object", "endpoint", "input_file_id", "completion_window", "status", "created_at"),
    id=string(),
    object=string(const="batch"),
    endpoint=string(),
    errors=nullable(
        obj(
            data=array(
                obj(code=string(), message=string(), param=nullable(string()), line=nullable(integer()))
            ),
            object=string(),
        )
    ),
    input_file_id=string(),
    completion_window=string(),
    status=string(enum=STATUSES),
    output_file_id=nullable(string()),
    error_file_id=nullable(string()),
    created_at=integer(),
    in_progress_at=_STAMP,
    expires_at=_STAMP,
    finalizing_at=_STAMP,
    completed_at=_STAMP,
    failed_at=_STAMP,
    expired_at=_STAMP,
    cancelling_at=_STAMP,
    cancelled_at=_STAMP,
    request_counts=obj(
        ("total", "completed", "failed"), total=integer(), completed=integer(), failed=integer()
    ),
    metadata=nullable(obj()),
    usage=obj(input_tokens=integer(), output_tokens=integer(), total_tokens=integer()),
)

OPERATIONS = (
    Operation(
        "POST",
        "/v1/batches",
        "Create a batch from an uploaded file of purpose batch; it runs in the background",
        TAG,
        Family.OPENAI,
        {200: Reply("The batch (validating)", {JSON: _BATCH})},
        body=obj(
            ("input_file_id", "endpoint", "completion_window"),
            input_file_id=string(minLength=1),
            endpoint=string(enum=ENDPOINTS),
            completion_window=string(enum=["24h"]),
            metadata=nullable(obj()),
        ),
    ),
    Operation(
        "GET",
        "/v1/batches",
        "The caller's batches, newest first",
        TAG,
        Family.OPENAI,
        {
            200: Reply(
                "A page of batches",
                {
                    JSON: obj(
                        ("object", "data", "has_more"),
                        object=string(const="list"),
                        data=array(_BATCH),
                        first_id=nullable(string()),
                        last_id=nullable(string()),
                        has_more=boolean(),
                    )
                },
            )
        },
        params=(
            Param("after", "query", string(), "a batch id: the page after it"),
            Param("limit", "query", integer(minimum=1, maximum=100), "batches per page (default 20)"),
        ),
    ),
    Operation(
        "GET",
        "/v1/batches/{id}",
        "A batch: its status, request counts and files",
        TAG,
        Family.OPENAI,
        {200: Reply("The batch", {JSON: _BATCH})},
        params=_ID,
    ),
    Operation(
        "POST",
        "/v1/batches/{id}/cancel",
        "Cancel a batch: requests not sent yet are not sent (cancelling, then cancelled)",
        TAG,
        Family.OPENAI,
        {200: Reply("The batch", {JSON: _BATCH})},
        params=_ID,
        body_required=False,
    ),
)
