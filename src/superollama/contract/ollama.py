"""The Ollama API (``/api/*``): inference, model management, version. Errors: ``{"error": "..."}``."""

from __future__ import annotations

from superollama.contract.model import (
    JSON,
    NDJSON,
    Family,
    Operation,
    Reply,
    array,
    boolean,
    integer,
    nullable,
    number,
    obj,
    string,
)

__all__ = ["OPERATIONS"]

TAG = "Ollama"
MODEL = string(minLength=1, description="a deployment, version or connection model name")
_STREAM = string(description="newline-delimited JSON objects, the last with done: true")
_OPTIONS = obj(
    num_predict=integer(),
    num_ctx=integer(minimum=1),
    temperature=number(minimum=0),
    top_p=number(minimum=0, maximum=1),
    top_k=integer(minimum=0),
    seed=integer(),
    stop=array(string()),
)
_COMMON = {
    "stream": boolean(),
    "format": {"anyOf": [string(), obj()]},
    "options": _OPTIONS,
    "keep_alive": {"anyOf": [string(), number()]},
}
_MESSAGE = obj(
    ("role", "content"),
    role=string(enum=["system", "user", "assistant", "tool"]),
    content=string(),
    images=array(string()),
    tool_calls=array(obj()),
)
_DONE = {
    "model": string(),
    "created_at": string(),
    "done": boolean(),
    "done_reason": string(),
    "total_duration": integer(),
    "prompt_eval_count": integer(),
    "eval_count": integer(),
}
_MODEL_ENTRY = obj(("name", "model"), name=string(), model=string(), size=integer(), digest=string())
_NONE: dict[str, object] = {}

OPERATIONS = (
    Operation(
        "POST",
        "/api/chat",
        "Chat (streamed as NDJSON unless stream: false)",
        TAG,
        Family.OLLAMA,
        {
            200: Reply(
                "The answer, or its chunks as NDJSON",
                {
                    JSON: obj(
                        ("model", "done"), message=obj(("role",), role=string(), content=string()), **_DONE
                    ),
                    NDJSON: _STREAM,
                },
            )
        },
        body=obj(("model",), model=MODEL, messages=array(_MESSAGE), tools=array(obj()), **_COMMON),
        upstream=True,
    ),
    Operation(
        "POST",
        "/api/generate",
        "Generate from a prompt (an empty prompt loads or, with keep_alive 0, unloads)",
        TAG,
        Family.OLLAMA,
        {
            200: Reply(
                "The answer, or its chunks as NDJSON",
                {
                    JSON: obj(("model", "done"), response=string(), context=array(integer()), **_DONE),
                    NDJSON: _STREAM,
                },
            )
        },
        body=obj(
            ("model",),
            model=MODEL,
            prompt=string(),
            suffix=string(),
            system=string(),
            template=string(),
            raw=boolean(),
            images=array(string()),
            context=array(integer()),
            **_COMMON,
        ),
        upstream=True,
    ),
    Operation(
        "POST",
        "/api/embed",
        "Embeddings for one or more inputs",
        TAG,
        Family.OLLAMA,
        {
            200: Reply(
                "The embeddings",
                {JSON: obj(("model", "embeddings"), model=string(), embeddings=array(array(number())))},
            )
        },
        body=obj(
            ("model", "input"),
            model=MODEL,
            input={"anyOf": [string(), array(string(), minItems=1)]},
            truncate=boolean(),
            options=_OPTIONS,
            keep_alive={"anyOf": [string(), number()]},
        ),
        upstream=True,
    ),
    Operation(
        "POST",
        "/api/embeddings",
        "One embedding (Ollama's older endpoint)",
        TAG,
        Family.OLLAMA,
        {200: Reply("The embedding", {JSON: obj(("embedding",), embedding=array(number()))})},
        body=obj(("model", "prompt"), model=MODEL, prompt=string(), options=_OPTIONS),
        upstream=True,
    ),
    Operation(
        "GET",
        "/api/version",
        "The server's version",
        TAG,
        Family.OLLAMA,
        {200: Reply("The version", {JSON: obj(("version",), version=string())})},
    ),
    Operation(
        "GET",
        "/api/tags",
        "The local models",
        TAG,
        Family.OLLAMA,
        {200: Reply("The models", {JSON: obj(("models",), models=array(_MODEL_ENTRY))})},
    ),
    Operation(
        "GET",
        "/api/ps",
        "The models loaded now",
        TAG,
        Family.OLLAMA,
        {200: Reply("The loaded models", {JSON: obj(("models",), models=array(_MODEL_ENTRY))})},
    ),
    Operation(
        "POST",
        "/api/show",
        "A model's details",
        TAG,
        Family.OLLAMA,
        {
            200: Reply(
                "The details", {JSON: obj(details=obj(), model_info=obj(), modified_at=nullable(string()))}
            )
        },
        body=obj((), model=MODEL, name=MODEL, verbose=boolean()),
        upstream=True,
    ),
    Operation(
        "POST",
        "/api/pull",
        "Pull a model (progress as NDJSON unless stream: false)",
        TAG,
        Family.OLLAMA,
        {
            200: Reply(
                "The progress, or the final status",
                {JSON: obj(("status",), status=string()), NDJSON: _STREAM},
            )
        },
        body=obj((), model=MODEL, name=MODEL, insecure=boolean(), stream=boolean()),
        upstream=True,
    ),
    Operation(
        "POST",
        "/api/copy",
        "Copy a model under a new name",
        TAG,
        Family.OLLAMA,
        {200: Reply("Copied (empty body)")},
        body=obj(("source", "destination"), source=string(minLength=1), destination=string(minLength=1)),
        upstream=True,
    ),
    Operation(
        "DELETE",
        "/api/delete",
        "Delete a model",
        TAG,
        Family.OLLAMA,
        {200: Reply("Deleted (empty body)")},
        body=obj((), model=MODEL, name=MODEL),
        upstream=True,
    ),
)
