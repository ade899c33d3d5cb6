"""OpenAI request parsing and response shapes for our own workers (transformers): pure, no torch.

Parsing turns a JSON body into small frozen values or raises :class:`RequestError` (rendered as OpenAI's
``{"error": {...}}`` with status 400). Builders return the exact dicts OpenAI sends, chunk by chunk.
:class:`StopText` decides how much generated text is safe to stream while a ``stop`` string may still
be forming.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
    "usage",
]

_MAX_STOPS = 4
_ROLES = {"system", "user", "assistant", "tool", "developer"}
# Refused with a 400 rather than silently ignored: the worker cannot honour them.
_UNSUPPORTED_CHAT = ("tools", "functions", "logprobs", "top_logprobs", "audio", "prediction")


class RequestError(Exception):
    """A request the worker refuses: ``status`` 400 (or 503 when busy), OpenAI's error fields."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int = 400,
        type: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.type = type
        self.code = code


def error_body(exc: RequestError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens: ``temperature`` 0 is greedy; ``max_tokens`` None: up to the context's end."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatParams:
    messages: tuple[Mapping[str, str], ...]
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False


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


def _sampling(body: Mapping[str, Any], *, chat: bool) -> Sampling:
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
    )


def _object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise RequestError("the request body must be a JSON object")
    return body


def _content(message: Mapping[str, Any], i: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise RequestError(
                    f"content part of type {kind!r} is not supported by this model (text only)",
                    param=f"messages[{i}].content",
                )
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise RequestError("'content' must be a string or a list of parts", param=f"messages[{i}].content")


def parse_chat(raw: Any) -> ChatParams:
    body = _object(raw)
    for key in _UNSUPPORTED_CHAT:
        if body.get(key) not in (None, False, [], {}):
            raise RequestError(f"'{key}' is not supported by the transformers runtime", param=key)
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") not in (None, "text"):
        raise RequestError("only response_format 'text' is supported here", param="response_format")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in _ROLES:
            raise RequestError(f"messages[{i}] needs a 'role' in {sorted(_ROLES)}", param=f"messages[{i}]")
        role = "system" if message["role"] == "developer" else str(message["role"])
        out.append({"role": role, "content": _content(message, i)})
    stream, include_usage = _stream(body)
    return ChatParams(tuple(out), _sampling(body, chat=True), stream, include_usage)


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
        "logprobs": body.get("logprobs") is not None,
        "best_of": body.get("best_of") not in (None, 1),
    }
    for key, bad in refused.items():
        if bad:
            raise RequestError(f"'{key}' is not supported by the transformers runtime", param=key)
    stream, include_usage = _stream(body)
    return CompletionParams(prompt, _sampling(body, chat=False), stream, include_usage)


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


class StopText:
    """Tracks the text generated so far against ``stop`` strings and yields only what is safe to send.

    ``update(text)`` takes the whole text generated so far and returns ``(delta, stopped)``: the new text
    that can go out now (holding back a tail that may still become a stop string, or an incomplete
    UTF-8 character), and whether a stop string was found (the text is cut before it).
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.sent = ""

    def update(self, text: str) -> tuple[str, bool]:
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            return self._advance(text[:cut]), True
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:k]):
                    hold = k
                    break
        end = len(text) - hold
        while end > 0 and text[end - 1] == "\ufffd":  # a multi-byte character still arriving
            end -= 1
        return self._advance(text[:end]), False

    def finish(self, text: str) -> str:
        """The rest of ``text`` at the end of generation (no stop string was met)."""
        return self._advance(text)

    def _advance(self, upto: str) -> str:
        if len(upto) <= len(self.sent) or not upto.startswith(self.sent):
            return ""
        delta = upto[len(self.sent) :]
        self.sent = upto
        return delta


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


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

    def chat(self, text: str, finish: str, use: Mapping[str, int]) -> dict[str, Any]:
        message = {"role": "assistant", "content": text, "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        return {**self._head("chat.completion"), "choices": [choice], "usage": dict(use)}

    def chat_chunk(self, delta: Mapping[str, Any], finish: str | None, with_usage: bool) -> dict[str, Any]:
        choice = {"index": 0, "delta": dict(delta), "logprobs": None, "finish_reason": finish}
        out = {**self._head("chat.completion.chunk"), "choices": [choice]}
        if with_usage:
            out["usage"] = None
        return out

    def completion(self, text: str, finish: str, use: Mapping[str, int]) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice], "usage": dict(use)}

    def completion_chunk(self, text: str, finish: str | None, with_usage: bool) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
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
