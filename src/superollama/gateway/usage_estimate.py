"""Usage we estimate when a backend reports none (a connection that ignores or cannot take
``stream_options.include_usage``): prompt tokens by the same estimate admission reserves with, completion
tokens from the text relayed. Runs once, when such a request ends — never per chunk."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from superollama.security import estimate_tokens

__all__ = ["estimate_answer", "estimate_stream", "estimate_text"]


def estimate_stream(body: Mapping[str, Any], events: Iterable[bytes]) -> tuple[int, int]:
    """``(prompt_tokens, completion_tokens)`` of a request and the SSE events its answer streamed."""
    chars = 0
    for chunk in events:
        for line in chunk.split(b"\n"):
            if line.startswith(b"data:"):
                chars += _generated_chars(_json(line[5:]))
    return _prompt(body), _tokens(chars)


def estimate_answer(body: Mapping[str, Any], data: bytes) -> tuple[int, int]:
    """``(prompt_tokens, completion_tokens)`` of a request and its JSON answer."""
    return _prompt(body), _tokens(_generated_chars(_json(data)))


def estimate_text(body: Mapping[str, Any], text: str) -> tuple[int, int]:
    """``(prompt_tokens, completion_tokens)`` of a request and the text generated for it."""
    return _prompt(body), _tokens(len(text))


def _prompt(body: Mapping[str, Any]) -> int:
    return estimate_tokens({**body, "max_tokens": 0, "max_completion_tokens": 0})  # no allowance


def _tokens(chars: int) -> int:
    return (chars + 3) // 4  # admission's rule of thumb: ~4 characters a token


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None  # [DONE], a comment, a cut-off event


def _generated_chars(obj: Any) -> int:
    """Characters generated in one answer or chunk: content, reasoning, tool-call arguments, text."""
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices, list):
        return 0
    chars = 0
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        part = choice.get("delta", choice.get("message"))
        if isinstance(part, dict):
            for key in ("content", "reasoning_content", "refusal"):
                value = part.get(key)
                chars += len(value) if isinstance(value, str) else 0
            for call in part.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    chars += len(str(function.get("name") or "")) + len(str(function.get("arguments") or ""))
        text = choice.get("text")
        chars += len(text) if isinstance(text, str) else 0
    return chars
