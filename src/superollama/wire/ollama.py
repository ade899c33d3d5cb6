"""Ollama wire edge: pure converters between Ollama's ``/api/*`` and the OpenAI shapes backends speak.

This module turns Ollama requests into OpenAI request bodies (chat completions, completions, embeddings)
and re-exports the answers' side (``ollama_responses``: OpenAI responses and SSE chunks → Ollama objects,
model list shapes), so callers use one namespace. No I/O: bad input raises ``InvalidRequest`` (400)
with Ollama-like wording.

Mapped: ``options`` (temperature, top_p, top_k, min_p, typical_p, seed, num_predict → max_tokens, stop,
repeat_penalty, repeat_last_n, presence/frequency_penalty; num_ctx and load-time options are ignored: a
running instance's context is fixed by its runtime), ``format`` (``"json"`` → ``json_object``, a schema →
``json_schema``), ``images`` (base64 → ``image_url`` data-URL parts and back), ``tools``. ``think`` is
ignored. A request's own ``template`` is Go-template-like text rendered with minimal support:
``{{ .System }}``, ``{{ .Prompt }}``, ``{{ .Response }}``, ``{{ if X }}…{{ else }}…{{ end }}`` and the
``{{-``/``-}}`` trim markers; anything else (``range``, functions, ``.Messages``) is refused with a 400.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from typing import Any

import orjson

from superollama.errors import InvalidRequest
from superollama.wire._numbers import INT32_MAX, INT64_MAX, INT64_MIN, Bound, kind_of, problem
from superollama.wire.ollama_responses import (
    StreamTranslator,
    Timing,
    chat_response,
    connection_tag_entry,
    done_object,
    embed_response,
    embeddings,
    error_message,
    expires_at,
    generate_response,
    ps_entry,
    response_text,
    rfc3339,
    show_response,
    stats,
    tag_entry,
)

__all__ = [
    "FOREVER",
    "StreamTranslator",
    "Timing",
    "chat_request",
    "chat_response",
    "completion_request",
    "connection_tag_entry",
    "content_to_ollama",
    "done_object",
    "embed_inputs",
    "embed_request",
    "embed_response",
    "embeddings",
    "error_message",
    "expires_at",
    "generate_chat_request",
    "generate_flags",
    "generate_messages",
    "generate_response",
    "image_part",
    "is_stream",
    "model_name",
    "options_to_openai",
    "parse_keep_alive",
    "ps_entry",
    "render_template",
    "response_format",
    "response_text",
    "rfc3339",
    "show_response",
    "stats",
    "tag_entry",
]

FOREVER = math.inf
# Ollama option → OpenAI parameter (or llama.cpp's extension of it).
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "seed": "seed",
    "num_predict": "max_tokens",
    "stop": "stop",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
# Every option Ollama documents, with the range a backend accepts (see ``_numbers``); the load-time ones
# (num_ctx, num_gpu …) are ignored but still checked, so a typo'd value is a 400 here as it is in Ollama.
_OPTION_BOUNDS = {
    "num_predict": Bound(True, -2, INT32_MAX),  # -1: no limit, -2: fill the context
    "top_k": Bound(True, -1, INT32_MAX),
    "seed": Bound(True, INT64_MIN, INT64_MAX),
    "repeat_last_n": Bound(True, -1, INT32_MAX),  # -1: the context size
    "num_ctx": Bound(True, 1, INT32_MAX),
    "num_keep": Bound(True, -1, INT32_MAX),
    "num_batch": Bound(True, 1, INT32_MAX),
    "num_gpu": Bound(True, -1, INT32_MAX),
    "main_gpu": Bound(True, 0, INT32_MAX),
    "num_thread": Bound(True, 0, INT32_MAX),
    "mirostat": Bound(True, 0, 2),
    "temperature": Bound(False),
    "top_p": Bound(False, 0, 1),
    "min_p": Bound(False, 0, 1),
    "typical_p": Bound(False, 0, 1),
    "repeat_penalty": Bound(False),
    "presence_penalty": Bound(False),
    "frequency_penalty": Bound(False),
    "mirostat_tau": Bound(False),
    "mirostat_eta": Bound(False),
    "tfs_z": Bound(False),
}
_BOOL_OPTIONS = frozenset(
    {"numa", "low_vram", "f16_kv", "vocab_only", "use_mmap", "use_mlock", "penalize_newline", "logits_all"}
)
_MAX_KEEP_ALIVE = (2**63 - 1) / 1e9  # seconds in Go's time.Duration, which Ollama clients send
_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))
_DATA_URL = re.compile(r"^data:([^;,]*)(?:;[^,]*)?;base64,(.*)$", re.S)


def _bad(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _check(value: Any, bound: Bound, param: str) -> None:
    """A 400 naming ``param`` (``options.num_predict``) when ``value`` is outside ``bound``."""
    wrong = problem(value, bound)
    if wrong is not None:
        if wrong.code == "invalid_type":
            raise _bad(f"invalid {param}: expected {wrong.expected}, got {wrong.got}", param)
        raise _bad(f"invalid {param}: {wrong.got} is out of range ({bound.describe()})", param)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# -- request fields -------------------------------------------------------------------------------------
def model_name(body: Mapping[str, Any]) -> str:
    name = body.get("model") or body.get("name")  # ``name``: older clients
    if name is None or name == "":
        raise _bad("model is required")
    if not isinstance(name, str) or not name.strip():
        raise _bad("model must be a non-empty string")
    return name


def is_stream(body: Mapping[str, Any]) -> bool:
    """Ollama streams unless told not to (``stream`` defaults to true)."""
    stream = body.get("stream", True)
    if stream is None:
        return True
    if not isinstance(stream, bool):
        raise _bad(f"stream must be a boolean, not {stream!r}")
    return stream


def parse_keep_alive(value: Any) -> float | None:
    """Seconds to keep the model loaded after the request: ``None`` (server default), ``FOREVER`` (any
    negative), ``0`` (unload now). Numbers are seconds; strings are Go durations (``"5m"``, ``"1h30m"``)."""
    if value is None or value == "":
        return None
    if _is_number(value):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)
        except ValueError:
            parts = _DURATION.findall(body)
            if not parts or "".join(n + u for n, u in parts) != body:
                raise _bad(f"invalid keep_alive {value!r}: use a duration like '5m' or seconds") from None
            seconds = sign * sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise _bad(f"invalid keep_alive {value!r}: use a duration like '5m' or seconds", "keep_alive")
    if seconds < 0:
        return FOREVER
    if not seconds <= _MAX_KEEP_ALIVE:  # also NaN and inf ("1e400")
        raise _bad(f"invalid keep_alive {value!r}: longer than {_MAX_KEEP_ALIVE:.0f} seconds", "keep_alive")
    return seconds


def options_to_openai(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise _bad("options must be an object")
    out: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        bound = _OPTION_BOUNDS.get(key)
        if bound is not None:
            _check(value, bound, f"options.{key}")
        elif key in _BOOL_OPTIONS and not isinstance(value, bool):
            raise _bad(f"invalid options.{key}: expected a boolean, got {kind_of(value)}", f"options.{key}")
        target = _OPTIONS.get(key)
        if target is None:
            continue
        if key == "stop":
            stops = [value] if isinstance(value, str) else value
            if not isinstance(stops, list) or not all(isinstance(x, str) for x in stops):
                raise _bad("option stop must be a string or an array of strings", "options.stop")
            out[target] = stops
            continue
        if key == "num_predict" and value <= 0:
            continue  # -1 (no limit) and -2 (fill the context): the backend's own limit
        out[target] = value
    return out


def response_format(fmt: Any) -> dict[str, Any] | None:
    """``format``: ``"json"`` → ``json_object``; a JSON schema → ``json_schema``; ``""``/absent → none."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, Mapping):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": dict(fmt), "strict": True}}
    raise _bad(f'invalid format {fmt!r}: use "json" or a JSON schema object')


# -- images ---------------------------------------------------------------------------------------------
def image_part(image: Any, where: str = "images") -> dict[str, Any]:
    """An Ollama base64 image → an OpenAI ``image_url`` part with a data URL (MIME sniffed from the bytes)."""
    if not isinstance(image, str) or not image:
        raise _bad(f"{where}: an image must be a base64 string")
    if _DATA_URL.match(image):
        return {"type": "image_url", "image_url": {"url": image}}
    try:
        head = base64.b64decode(image, validate=True)[:16]
    except (binascii.Error, ValueError):
        raise _bad(f"{where}: invalid image data, expected base64") from None
    mime = next((m for magic, m in _MAGIC if head.startswith(magic)), None)
    if mime is None:
        mime = "image/webp" if head[:4] == b"RIFF" and head[8:12] == b"WEBP" else "image/jpeg"
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{image}"}}


def _content(text: str, images: Any, where: str) -> str | list[dict[str, Any]]:
    if not images:
        return text
    if not isinstance(images, list):
        raise _bad(f"{where}: images must be an array of base64 strings")
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    return parts + [image_part(img, f"{where}[{i}]") for i, img in enumerate(images)]


def content_to_ollama(content: Any) -> tuple[str, list[str]]:
    """OpenAI message content (text or parts) → Ollama's ``content`` and base64 ``images``.
    Images given by URL (not ``data:``) cannot become base64 without a fetch: they are left out."""
    if content is None or isinstance(content, str):
        return content or "", []
    texts, images = [], []
    for part in content:
        if part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif part.get("type") == "image_url":
            url = part.get("image_url", {}).get("url", "")
            if match := _DATA_URL.match(url):
                images.append(match.group(2))
    return "".join(texts), images


# -- chat and generate requests -------------------------------------------------------------------------
def _message(message: Any, i: int) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(message, Mapping):
        raise _bad(f"{where} must be an object")
    role, text = message.get("role"), message.get("content") or ""
    if role not in ("system", "user", "assistant", "tool"):
        raise _bad(f"{where}: invalid role {role!r}")
    if not isinstance(text, str):
        raise _bad(f"{where}: content must be a string")
    out: dict[str, Any] = {"role": role, "content": _content(text, message.get("images"), where)}
    calls = message.get("tool_calls")
    if role == "assistant" and calls:
        out["tool_calls"] = [
            {
                "id": f"call_{c['function']['name']}",
                "type": "function",
                "function": {
                    "name": c["function"]["name"],
                    "arguments": orjson.dumps(c["function"].get("arguments") or {}).decode(),
                },
            }
            for c in calls
        ]
    if role == "tool":
        out["tool_call_id"] = message.get("tool_call_id") or f"call_{message.get('tool_name') or ''}"
    return out


def _sampling(body: Mapping[str, Any], out: dict[str, Any], stream: bool) -> dict[str, Any]:
    out["stream"] = stream
    if stream:
        out["stream_options"] = {"include_usage": True}
    out.update(options_to_openai(body.get("options")))
    if (fmt := response_format(body.get("format"))) is not None:
        out["response_format"] = fmt
    return out


def chat_request(body: Mapping[str, Any], served_name: str) -> dict[str, Any]:
    """``/api/chat`` → ``/v1/chat/completions``. ``think`` is ignored (no backend parameter for it yet)."""
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        raise _bad("messages must be an array")
    out: dict[str, Any] = {"model": served_name, "messages": [_message(m, i) for i, m in enumerate(messages)]}
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list) or not all(isinstance(t, Mapping) and "function" in t for t in tools):
            raise _bad("tools must be an array of {type: function, function: {...}}")
        out["tools"] = [{"type": "function", "function": t["function"]} for t in tools]
    return _sampling(body, out, is_stream(body))


def generate_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The chat a non-raw ``/api/generate`` stands for: its ``system`` and its ``prompt`` (with images)."""
    for key in ("prompt", "system", "suffix", "template"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise _bad(f"{key} must be a string")
    system, prompt = body.get("system") or "", body.get("prompt") or ""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": _content(prompt, body.get("images"), "images")})
    return messages


def generate_flags(body: Mapping[str, Any]) -> tuple[bool, list[int] | None]:
    """``raw`` and ``context`` (token ids of an earlier answer) of an ``/api/generate`` body, checked."""
    raw = body.get("raw") or False
    if not isinstance(raw, bool):
        raise _bad(f"raw must be a boolean, not {raw!r}")
    context = body.get("context") or None
    if context is not None and not (
        isinstance(context, list) and all(_is_int(t) and 0 <= t <= INT32_MAX for t in context)
    ):
        raise _bad(f"context must be an array of token ids (integers from 0 to {INT32_MAX})", "context")
    if raw and body.get("images"):
        raise _bad("images cannot be sent with raw: they need the model's chat template")
    return raw, context


def generate_chat_request(body: Mapping[str, Any], served_name: str) -> dict[str, Any]:
    """``/api/generate`` as a chat (images need it; so does a backend that cannot render templates)."""
    return _sampling(body, {"model": served_name, "messages": generate_messages(body)}, is_stream(body))


def completion_request(prompt: str, body: Mapping[str, Any], served_name: str) -> dict[str, Any]:
    """``/api/generate`` with its prompt already rendered → ``/v1/completions``."""
    out: dict[str, Any] = {"model": served_name, "prompt": prompt}
    if body.get("suffix"):
        out["suffix"] = body["suffix"]
    out = _sampling(body, out, is_stream(body))
    fmt = out.get("response_format")
    if fmt is not None:  # llama.cpp reads ``response_format`` in chats only; its completions take a schema
        out["json_schema"] = fmt["json_schema"]["schema"] if "json_schema" in fmt else {"type": "object"}
    return out


_TAG = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def render_template(template: str, *, system: str, prompt: str, response: str = "") -> str:
    """Render a Go-template-like ``template`` (minimal support, see the module docstring)."""
    values = {".System": system, ".Prompt": prompt, ".Response": response}
    tokens: list[tuple[str, str]] = []  # ("text", s) | ("tag", expr)
    pos, trim_next = 0, False
    for m in _TAG.finditer(template):
        text = template[pos : m.start()]
        text = text.lstrip() if trim_next else text
        tokens += [("text", text.rstrip() if m.group(1) else text), ("tag", m.group(2))]
        pos, trim_next = m.end(), bool(m.group(3))
    tokens.append(("text", template[pos:].lstrip() if trim_next else template[pos:]))
    out: list[str] = []
    stack: list[bool] = []  # per open ``if``: is its current branch taken
    for kind, value in tokens:
        if kind == "text" or value in values:
            if all(stack):
                out.append(value if kind == "text" else values[value])
        elif value.startswith("if ") and value[3:].strip() in values:
            stack.append(bool(values[value[3:].strip()]))
        elif value == "else" and stack:
            stack[-1] = not stack[-1]
        elif value == "end" and stack:
            stack.pop()
        else:
            raise _bad(f"template: {{{{ {value} }}}} is not supported (.System, .Prompt, .Response, if/else)")
    if stack:
        raise _bad("template: an {{ if }} has no {{ end }}")
    return "".join(out)


# -- embeddings -----------------------------------------------------------------------------------------
def embed_inputs(body: Mapping[str, Any], key: str = "input") -> list[str]:
    """``input`` (``/api/embed``: a string or an array of strings) or ``prompt`` (legacy) as a list;
    empty when there is nothing to embed (the request then only loads the model)."""
    data = body.get(key)
    if data is None or data == "":
        return []
    if isinstance(data, str):
        return [data]
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        return list(data)
    raise _bad(f"{key} must be a string" + (" or an array of strings" if key == "input" else ""))


def embed_request(inputs: list[str], served_name: str, dimensions: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"model": served_name, "input": inputs, "encoding_format": "float"}
    if dimensions is not None:
        _check(dimensions, Bound(True, 1, INT32_MAX), "dimensions")
        out["dimensions"] = dimensions
    return out
