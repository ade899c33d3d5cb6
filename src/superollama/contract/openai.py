"""The OpenAI API (``/v1/*``): models, chat completions, completions, embeddings."""

from __future__ import annotations

from superollama.contract.model import (
    JSON,
    SSE,
    Family,
    Operation,
    Param,
    Reply,
    array,
    boolean,
    integer,
    nullable,
    number,
    obj,
    sse_event,
    string,
)

__all__ = ["OPERATIONS"]

TAG = "OpenAI"
MODEL = string(minLength=1, description="a deployment, version or connection model name")

_MESSAGE = obj(
    ("role",),
    role=string(enum=["system", "developer", "user", "assistant", "tool"]),
    content=nullable({"anyOf": [string(), array(obj())]}),
    name=string(),
    tool_call_id=string(),
    tool_calls=array(
        obj(
            ("type", "function"),
            id=string(),
            type=string(const="function"),
            function=obj(("name", "arguments"), name=string(), arguments=string()),
        )
    ),
)
_SAMPLING = {
    "temperature": number(minimum=0, maximum=2),
    "top_p": number(minimum=0, maximum=1),
    "max_tokens": integer(minimum=1),
    "max_completion_tokens": integer(minimum=1),
    "n": integer(minimum=1),
    "stop": nullable({"anyOf": [string(), array(string())]}),
    "seed": integer(),
    "presence_penalty": number(minimum=-2, maximum=2),
    "frequency_penalty": number(minimum=-2, maximum=2),
    "user": string(),
    "stream": boolean(),
    "stream_options": nullable(obj(include_usage=boolean())),
}
_USAGE = obj(
    ("prompt_tokens", "total_tokens"),
    prompt_tokens=integer(minimum=0),
    completion_tokens=integer(minimum=0),
    total_tokens=integer(minimum=0),
)
MODEL_OBJECT = obj(
    ("id", "object", "created", "owned_by"),
    id=string(),
    object=string(const="model"),
    created=integer(),
    owned_by=string(),
)
_CHAT_COMPLETION = obj(
    ("id", "object", "created", "model", "choices"),
    id=string(),
    object=string(const="chat.completion"),
    created=integer(),
    model=string(),
    choices=array(
        obj(
            ("index", "message"),
            index=integer(),
            message=obj(("role",), role=string(), content=nullable(string())),
            finish_reason=nullable(string()),
        )
    ),
    usage=_USAGE,
)
_COMPLETION = obj(
    ("id", "object", "created", "model", "choices"),
    id=string(),
    object=string(const="text_completion"),
    created=integer(),
    model=string(),
    choices=array(obj(("index", "text"), index=integer(), text=string(), finish_reason=nullable(string()))),
    usage=_USAGE,
)
_EMBEDDINGS = obj(
    ("object", "data", "model"),
    object=string(const="list"),
    data=array(
        obj(
            ("object", "embedding", "index"),
            object=string(const="embedding"),
            embedding={"anyOf": [array(number()), string()]},
            index=integer(),
        )
    ),
    model=string(),
    usage=_USAGE,
)
_STREAM = sse_event("a chunk as JSON, or [DONE] at the end")

OPERATIONS = (
    Operation(
        "GET",
        "/v1/models",
        "List the models clients can name",
        TAG,
        Family.OPENAI,
        {200: Reply("The routable models", {JSON: obj(("object", "data"), data=array(MODEL_OBJECT))})},
    ),
    Operation(
        "GET",
        "/v1/models/{model}",
        "One routable model",
        TAG,
        Family.OPENAI,
        {200: Reply("The model", {JSON: MODEL_OBJECT})},
        params=(Param("model", "path", string(minLength=1), "the model's name", required=True),),
    ),
    Operation(
        "POST",
        "/v1/chat/completions",
        "Create a chat completion (streamed with stream: true)",
        TAG,
        Family.OPENAI,
        {
            200: Reply(
                "The completion, or its chunks as server-sent events", {JSON: _CHAT_COMPLETION, SSE: _STREAM}
            )
        },
        body=obj(
            ("model", "messages"),
            model=MODEL,
            messages=array(_MESSAGE, minItems=1),
            tools=array(obj(("type",), type=string(), function=obj())),
            tool_choice={"anyOf": [string(), obj()]},
            response_format=obj(("type",), type=string()),
            logprobs=boolean(),
            **_SAMPLING,
        ),
        upstream=True,
    ),
    Operation(
        "POST",
        "/v1/completions",
        "Create a text completion (legacy)",
        TAG,
        Family.OPENAI,
        {
            200: Reply(
                "The completion, or its chunks as server-sent events", {JSON: _COMPLETION, SSE: _STREAM}
            )
        },
        body=obj(
            ("model", "prompt"),
            model=MODEL,
            prompt={"anyOf": [string(), array(string())]},
            echo=boolean(),
            **_SAMPLING,
        ),
        upstream=True,
    ),
    Operation(
        "POST",
        "/v1/embeddings",
        "Create embeddings",
        TAG,
        Family.OPENAI,
        {200: Reply("One embedding per input", {JSON: _EMBEDDINGS})},
        body=obj(
            ("model", "input"),
            model=MODEL,
            input={"anyOf": [string(), array(string(), minItems=1)]},
            encoding_format=string(enum=["float", "base64"]),
            dimensions=integer(minimum=1),
            user=string(),
        ),
        upstream=True,
    ),
)
