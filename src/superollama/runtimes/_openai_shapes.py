"""OpenAI request parsing and response shapes for our own workers (transformers): pure, no torch.

Parsing turns a JSON body into small frozen values or raises :class:`RequestError` (rendered as OpenAI's
``{"error": {...}}`` with status 400). Builders return the exact dicts OpenAI sends, chunk by chunk.
:class:`StopText` (``_stop_text``) decides how much generated text is safe to stream while a ``stop``
string may still be forming. ``response_format`` compiles to a JSON guide node (``_json_schema``);
``tools`` parse in ``_tools``, logprobs in ``_logprobs``.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from superollama.core.images import ImageError, parse_data_url
from superollama.runtimes import _tools
from superollama.runtimes._json_schema import ANY_OBJECT, Node, SchemaError, compile_schema
from superollama.runtimes._logprobs import (
    TokenLogprob,
    chat_logprobs,
    completion_logprobs,
    parse_chat_logprobs,
    parse_completion_logprobs,
)
from superollama.runtimes._request_error import RequestError, error_body
from superollama.runtimes._stop_text import StopText
from superollama.runtimes._tools import ToolCall, ToolParams

__all__ = [
    "ChatParams",
    "CompletionParams",
    "EmbedParams",
    "Reply",
    "RequestError",
    "Sampling",
    "StopText",
    "embeddings_response",
    "error_body",
    "parse_chat",
    "parse_completion",
    "parse_embeddings",
    "parse_response_format",
    "usage",
]

_MAX_STOPS = 4
_ROLES = {"system", "user", "assistant", "tool", "developer"}
# Refused with a 400 rather than silently ignored: the worker cannot honour them.
_UNSUPPORTED_CHAT = ("functions", "function_call", "audio", "prediction")


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens: ``temperature`` 0 is greedy; ``max_tokens`` None: up to the context's end;
    ``logprobs``: report each token's logprob and this many alternatives (None: off); ``json``: keep
    the output inside this JSON guide node (None: free text)."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    json: Node | None = None


@dataclass(frozen=True)
class ChatParams:
    messages: tuple[Mapping[str, Any], ...]
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    tools: ToolParams | None = None
    images: tuple[bytes, ...] = ()  # in the order their ``{"type": "image"}`` parts come in messages


@dataclass(frozen=True)
class CompletionParams:
    prompt: str
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False


@dataclass(frozen=True)
class EmbedParams:
    inputs: tuple[str, ...]
    base64: bool = False
    dimensions: int | None = None


def _number(body: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise RequestError(f"'{key}' must be a number from {lo:g} to {hi:g}", param=key)
    return float(value)


def _int(body: Mapping[str, Any], key: str, lo: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise RequestError(f"'{key}' must be an integer >= {lo}", param=key)
    return value


def _bool(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"'{key}' must be a boolean", param=key)
    return value


def _stream(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, Mapping):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    if not stream:
        raise RequestError("'stream_options' is only allowed when 'stream' is true", param="stream_options")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise RequestError("'include_usage' must be a boolean", param="stream_options.include_usage")
    return stream, include


def _sampling(body: Mapping[str, Any], *, chat: bool, guide: Node | None = None) -> Sampling:
    n = body.get("n", 1)
    if n != 1:
        raise RequestError("this model serves 'n' = 1 only", param="n")
    max_tokens = _int(body, "max_completion_tokens", 1) if chat else None
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", 1)
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,) if stop else ()
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= _MAX_STOPS:
        stops = tuple(s for s in stop if s)
    else:
        raise RequestError(f"'stop' must be a string or a list of up to {_MAX_STOPS} strings", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError("'seed' must be an integer", param="seed")
    return Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        seed=seed,
        stop=stops,
        logprobs=parse_chat_logprobs(body) if chat else parse_completion_logprobs(body),
        json=guide,
    )


def _object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise RequestError("the request body must be a JSON object")
    return body


def _content(message: Mapping[str, Any], i: int, images: list[bytes]) -> str | list[dict[str, Any]]:
    """A message's text; with images, Hugging Face's content parts (``{"type": "image"}`` where each
    image goes, ``{"type": "text", ...}``), the images' bytes appended to ``images``."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            if kind == "text":
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            elif kind == "image_url":
                images.append(_image(part, i))
                parts.append({"type": "image"})
            else:
                raise RequestError(
                    f"content part of type {kind!r} is not supported by this model",
                    param=f"messages[{i}].content",
                )
        if all(p["type"] == "text" for p in parts):
            return "".join(p["text"] for p in parts)
        return parts
    raise RequestError("'content' must be a string or a list of parts", param=f"messages[{i}].content")


def _image(part: Mapping[str, Any], i: int) -> bytes:
    """An ``image_url`` part's bytes. Only data URLs: the gateway fetches http(s) URLs and sends data."""
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, Mapping) else ref
    if not isinstance(url, str) or not url.startswith("data:"):
        raise RequestError(
            "this worker reads images as base64 data URLs (the gateway fetches http(s) URLs)",
            param=f"messages[{i}].content",
            code="invalid_image",
        )
    try:
        return parse_data_url(url)[1]
    except ImageError as exc:
        raise RequestError(str(exc), param=f"messages[{i}].content", code="invalid_image") from None


def parse_response_format(value: Any) -> Node | None:
    """``text`` (or absent): None; ``json_object``: any JSON object; ``json_schema``: its schema's node."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return ANY_OBJECT
    if kind != "json_schema":
        raise RequestError(
            "'response_format' must be {'type': 'text' | 'json_object' | 'json_schema', …}",
            param="response_format",
        )
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise RequestError(
            "'response_format.json_schema' must be an object with a 'name' and a 'schema'",
            param="response_format",
        )
    return _schema(spec.get("schema", True), "response_format")


def _schema(schema: Any, param: str) -> Node:
    try:
        return compile_schema(schema)
    except SchemaError as exc:
        raise RequestError(
            f"the JSON schema cannot be guaranteed: {exc}", param=param, code="unsupported_schema"
        ) from exc


def _message(message: Any, i: int, images: list[bytes]) -> dict[str, Any]:
    if not isinstance(message, Mapping) or message.get("role") not in _ROLES:
        raise RequestError(f"messages[{i}] needs a 'role' in {sorted(_ROLES)}", param=f"messages[{i}]")
    role = "system" if message["role"] == "developer" else str(message["role"])
    content = _content(message, i, images)
    return {"role": role, "content": content, **_tools.message_tool_fields(message, i)}


def parse_chat(raw: Any) -> ChatParams:
    body = _object(raw)
    for key in _UNSUPPORTED_CHAT:
        if body.get(key) not in (None, False, [], {}):
            raise RequestError(f"'{key}' is not supported by the transformers runtime", param=key)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    images: list[bytes] = []
    out = tuple(_message(m, i, images) for i, m in enumerate(messages))
    tools = _tools.parse_tools(body)
    guide = parse_response_format(body.get("response_format"))
    if tools is not None and tools.guided:
        guide = _tools.call_node(tools)
    stream, include_usage = _stream(body)
    sampling = _sampling(body, chat=True, guide=guide)
    return ChatParams(out, sampling, stream, include_usage, tools, tuple(images))


def parse_completion(raw: Any) -> CompletionParams:
    body = _object(raw)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError("'prompt' must be a string (one prompt per request)", param="prompt")
    refused = {
        "echo": body.get("echo") not in (None, False),
        "suffix": body.get("suffix") not in (None, ""),
        "best_of": body.get("best_of") not in (None, 1),
    }
    for key, bad in refused.items():
        if bad:
            raise RequestError(f"'{key}' is not supported by the transformers runtime", param=key)
    guide = parse_response_format(body.get("response_format"))  # vLLM's extension of completions
    if guide is None and body.get("json_schema") is not None:  # llama.cpp's (the gateway sends both)
        guide = _schema(body["json_schema"], "json_schema")
    stream, include_usage = _stream(body)
    return CompletionParams(prompt, _sampling(body, chat=False, guide=guide), stream, include_usage)


def parse_embeddings(raw: Any) -> EmbedParams:
    body = _object(raw)
    value = body.get("input")
    if isinstance(value, str):
        inputs: tuple[str, ...] = (value,)
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        inputs = tuple(value)
    elif isinstance(value, list) and value:
        raise RequestError("'input' must be text: token arrays are not supported here", param="input")
    else:
        raise RequestError("'input' must be a string or a non-empty list of strings", param="input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise RequestError("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    return EmbedParams(inputs, fmt == "base64", _int(body, "dimensions", 1))


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _chat_lp(entries: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    return None if entries is None else chat_logprobs(entries)


def _legacy_lp(entries: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    return None if entries is None else completion_logprobs(entries)


@dataclass(frozen=True)
class Reply:
    """What every response and chunk of one request carries: its id, creation time and model name.

    Builds the exact bodies OpenAI sends: ``chat.completion`` / ``chat.completion.chunk`` and
    ``text_completion`` (plain and streamed). With ``stream_options.include_usage`` every chunk has
    ``"usage": null`` and a last chunk with no choices carries the usage."""

    id: str
    created: int
    model: str

    def _head(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
        }

    def chat(
        self,
        text: str | None,
        finish: str,
        use: Mapping[str, int],
        *,
        logprobs: Sequence[TokenLogprob] | None = None,
        tool_calls: Sequence[ToolCall] = (),
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if tool_calls:
            message["tool_calls"] = [c.as_openai() for c in tool_calls]
        choice = {"index": 0, "message": message, "logprobs": _chat_lp(logprobs), "finish_reason": finish}
        return {**self._head("chat.completion"), "choices": [choice], "usage": dict(use)}

    def chat_chunk(
        self,
        delta: Mapping[str, Any],
        finish: str | None,
        with_usage: bool,
        logprobs: Sequence[TokenLogprob] | None = None,
    ) -> dict[str, Any]:
        choice = {"index": 0, "delta": dict(delta), "logprobs": _chat_lp(logprobs), "finish_reason": finish}
        out = {**self._head("chat.completion.chunk"), "choices": [choice]}
        if with_usage:
            out["usage"] = None
        return out

    def completion(
        self,
        text: str,
        finish: str,
        use: Mapping[str, int],
        logprobs: Sequence[TokenLogprob] | None = None,
    ) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": _legacy_lp(logprobs), "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice], "usage": dict(use)}

    def completion_chunk(
        self,
        text: str,
        finish: str | None,
        with_usage: bool,
        logprobs: Sequence[TokenLogprob] | None = None,
    ) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": _legacy_lp(logprobs), "finish_reason": finish}
        out = {**self._head("text_completion"), "choices": [choice]}
        if with_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, obj: str, use: Mapping[str, int]) -> dict[str, Any]:
        """The last chunk of a stream with ``include_usage``: no choices, the usage."""
        return {**self._head(obj), "choices": [], "usage": dict(use)}


def embeddings_response(
    model: str, vectors: Sequence[Sequence[float]], *, as_base64: bool, prompt_tokens: int
) -> dict[str, Any]:
    data = []
    for i, vector in enumerate(vectors):
        value: Any = (
            base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
            if as_base64
            else [float(x) for x in vector]
        )
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
