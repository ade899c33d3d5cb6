"""Anthropic Messages wire edge: request models, and pure converters to and from the OpenAI chat API our
backends speak. No I/O.

Backends (llama.cpp, transformers, vLLM, connections) all take OpenAI chat, so a Messages request is
translated once on the way in (``chat_request``) and its answer once on the way out (``message``; the
stream in ``wire.anthropic_stream``). What maps how:

- ``system`` (a string or text blocks) → one leading ``system`` message.
- user ``text``/``image`` blocks → a string (text only) or OpenAI content parts (``image_url``, the
  base64 source as a ``data:`` URL); ``tool_result`` blocks → ``tool`` messages, placed before the rest of
  that user turn (Anthropic puts them first; OpenAI needs them right after the assistant's calls).
- assistant ``tool_use`` blocks → ``tool_calls`` (``input`` → the JSON ``arguments`` string); ``thinking``
  blocks from earlier turns are dropped (no backend of ours takes them back).
- ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``metadata.user_id`` → the same OpenAI fields
  (``user``); ``tool_choice`` auto/any/tool/none → auto/required/function/none.
- ``stop_sequences`` are *not* sent to the backend: OpenAI backends strip the matched text and report a
  plain ``stop``, which cannot tell ``stop_sequence`` from ``end_turn``. The gateway watches the text for
  them itself (``StopScanner`` in ``anthropic_stream``) and ends the generation there.

Requests are validated by pydantic models (``MessagesRequest``, ``CountTokensRequest``), so the contract
(OpenAPI) is generated from the same definitions; a validation failure is a 400 ``invalid_request_error``
that names the field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from superollama.errors import InvalidRequest, SuperOllamaError

__all__ = [
    "CountTokensRequest",
    "MessagesRequest",
    "chat_request",
    "error_body",
    "error_type",
    "has_images",
    "message",
    "message_id",
    "parse",
    "sse",
    "stop_reason",
    "tool_input",
    "usage",
]


_M = TypeVar("_M", bound=BaseModel)


class _Wire(BaseModel):
    """Unknown fields are kept (``cache_control``, ``citations`` …) and ignored, as Anthropic's own
    newer fields would be by an older server."""

    model_config = ConfigDict(extra="allow")


class TextBlock(_Wire):
    type: Literal["text"]
    text: StrictStr


class Base64Source(_Wire):
    type: Literal["base64"]
    media_type: StrictStr
    data: StrictStr


class UrlSource(_Wire):
    type: Literal["url"]
    url: StrictStr


class ImageBlock(_Wire):
    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource, Field(discriminator="type")]


class ToolUseBlock(_Wire):
    type: Literal["tool_use"]
    id: StrictStr
    name: StrictStr
    input: dict[str, Any]


class ToolResultBlock(_Wire):
    type: Literal["tool_result"]
    tool_use_id: StrictStr
    content: StrictStr | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] | None = None
    is_error: StrictBool = False


class ThinkingBlock(_Wire):
    type: Literal["thinking", "redacted_thinking"]


Block = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock, Field(discriminator="type")
]


class Message(_Wire):
    role: Literal["user", "assistant"]
    content: StrictStr | list[Block]


class Tool(_Wire):
    name: Annotated[StrictStr, Field(min_length=1)]
    description: StrictStr | None = None
    input_schema: dict[str, Any]


class ToolChoice(_Wire):
    type: Literal["auto", "any", "tool", "none"]
    name: StrictStr | None = None
    disable_parallel_tool_use: StrictBool | None = None


class CountTokensRequest(_Wire):
    """``POST /v1/messages/count_tokens``: what a Messages request sends, less the generation settings."""

    model: Annotated[StrictStr, Field(min_length=1)]
    messages: list[Message]
    system: StrictStr | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``."""

    max_tokens: Annotated[StrictInt, Field(ge=1)]
    stop_sequences: list[StrictStr] | None = None
    stream: StrictBool = False
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[StrictInt, Field(ge=0)] | None = None
    metadata: dict[str, Any] | None = None


def parse(model: type[_M], body: Mapping[str, Any]) -> _M:
    """``body`` as ``model``, or a 400 naming the first field that is wrong (``messages.0.content``)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        # of a union's failed branches, the one that got furthest says what is wrong
        first = max(exc.errors(), key=lambda e: len(e["loc"]))
        where = ".".join(str(p) for p in first["loc"] if isinstance(p, int) or _FIELD.fullmatch(str(p)))
        raise InvalidRequest(f"{where}: {first['msg']}" if where else first["msg"], param=where) from None


_FIELD = re.compile(r"(?!(?:str|int|float|bool|dict|list|none)$)[A-Za-z_][A-Za-z0-9_]*")


# -- request: Anthropic → OpenAI chat ---------------------------------------------------------------------


def _text(blocks: str | list[TextBlock] | None) -> str:
    if blocks is None or isinstance(blocks, str):
        return blocks or ""
    return "\n\n".join(b.text for b in blocks)


def _image_part(block: ImageBlock) -> dict[str, Any]:
    source = block.source
    url = source.url if isinstance(source, UrlSource) else f"data:{source.media_type};base64,{source.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: ToolResultBlock) -> dict[str, Any]:
    content = block.content
    if isinstance(content, list):
        if any(isinstance(part, ImageBlock) for part in content):
            raise InvalidRequest("images inside tool_result are not supported", param="messages")
        text = "\n\n".join(part.text for part in content if isinstance(part, TextBlock))
    else:
        text = content or ""
    if block.is_error:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}


def _user(content: str | list[Block]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools = [_tool_result(b) for b in content if isinstance(b, ToolResultBlock)]
    parts: list[dict[str, Any]] = []
    for b in content:
        if isinstance(b, TextBlock):
            parts.append({"type": "text", "text": b.text})
        elif isinstance(b, ImageBlock):
            parts.append(_image_part(b))
        elif isinstance(b, ToolUseBlock):
            raise InvalidRequest("tool_use blocks belong to assistant messages", param="messages")
    if not parts:
        return tools
    if all(p["type"] == "text" for p in parts):  # plain text: what every chat template takes
        return [*tools, {"role": "user", "content": "\n\n".join(p["text"] for p in parts)}]
    return [*tools, {"role": "user", "content": parts}]


def _assistant(content: str | list[Block]) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text = "".join(b.text for b in content if isinstance(b, TextBlock))
    calls = [
        {
            "id": b.id,
            "type": "function",
            "function": {"name": b.name, "arguments": orjson.dumps(b.input).decode()},
        }
        for b in content
        if isinstance(b, ToolUseBlock)
    ]
    if any(isinstance(b, ImageBlock | ToolResultBlock) for b in content):
        raise InvalidRequest("assistant messages take text, tool_use and thinking blocks", param="messages")
    out: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        out["tool_calls"] = calls
    return out


def _tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest("tool_choice.name is required when tool_choice.type is 'tool'")
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def chat_request(req: CountTokensRequest, served_name: str) -> dict[str, Any]:
    """The OpenAI chat request for a Messages (or count_tokens) request, for model ``served_name``."""
    messages: list[dict[str, Any]] = []
    if system := _text(req.system):
        messages.append({"role": "system", "content": system})
    for m in req.messages:
        messages.extend(_user(m.content) if m.role == "user" else [_assistant(m.content)])
    out: dict[str, Any] = {"model": served_name, "messages": messages}
    if req.tools:
        out["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    **({"description": t.description} if t.description else {}),
                    "parameters": t.input_schema,
                },
            }
            for t in req.tools
        ]
    if req.tool_choice is not None:
        out["tool_choice"] = _tool_choice(req.tool_choice)
        if req.tool_choice.disable_parallel_tool_use:
            out["parallel_tool_calls"] = False
    if isinstance(req, MessagesRequest):
        out["max_tokens"] = req.max_tokens
        for key in ("temperature", "top_p", "top_k"):
            if (value := getattr(req, key)) is not None:
                out[key] = value
        user = (req.metadata or {}).get("user_id")
        if isinstance(user, str):
            out["user"] = user
        if req.stream:
            out["stream"] = True
            out["stream_options"] = {"include_usage": True}
    return out


def has_images(req: CountTokensRequest) -> bool:
    return any(
        isinstance(m.content, list) and any(isinstance(b, ImageBlock) for b in m.content)
        for m in req.messages
    )


# -- answer: OpenAI chat → Anthropic ---------------------------------------------------------------------


def message_id() -> str:
    return "msg_" + os.urandom(12).hex()


def stop_reason(finish: Any) -> str:
    """OpenAI's ``finish_reason`` as Anthropic's ``stop_reason`` (a stop sequence is decided by us)."""
    return {"length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use"}.get(
        str(finish), "end_turn"
    )


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's JSON ``arguments`` as the ``input`` object (a non-object is wrapped, never lost)."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = orjson.loads(arguments or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"value": value}


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"input_tokens": prompt, "output_tokens": completion}


def message(
    resp: Mapping[str, Any],
    model: str,
    *,
    msg_id: str | None = None,
    text: str | None = None,
    stop: str | None = None,
) -> dict[str, Any]:
    """The Anthropic ``Message`` for an OpenAI chat completion. ``text``/``stop``: the answer cut at the
    stop sequence ``stop`` (found by the gateway), instead of the backend's own end."""
    choices = resp.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], Mapping) else {}
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    answer = text if text is not None else msg.get("content")
    if answer:
        content.append({"type": "text", "text": answer})
    for call in msg.get("tool_calls") or () if stop is None else ():
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "toolu_" + os.urandom(12).hex(),
                "name": function.get("name", ""),
                "input": tool_input(function.get("arguments")),
            }
        )
    reason = "stop_sequence" if stop is not None else stop_reason(choice.get("finish_reason"))
    if reason == "end_turn" and any(c["type"] == "tool_use" for c in content):
        reason = "tool_use"  # some backends say "stop" after a tool call
    counts = resp.get("usage") or {}
    return {
        "id": msg_id or message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": stop,
        "usage": usage(int(counts.get("prompt_tokens") or 0), int(counts.get("completion_tokens") or 0)),
    }


# -- errors and events ----------------------------------------------------------------------------------

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status (``invalid_request_error`` for other 4xx)."""
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(exc: SuperOllamaError, request_id: str | None = None) -> dict[str, Any]:
    """Anthropic's error envelope for one of our errors."""
    body: dict[str, Any] = {
        "type": "error",
        "error": {"type": error_type(exc.status), "message": exc.message},
    }
    if request_id:
        body["request_id"] = request_id
    return body


def sse(event: str, data: Mapping[str, Any]) -> bytes:
    """One server-sent event the way the Anthropic SDKs read it: an ``event:`` line naming its type."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
