"""Token log-probabilities: the values the engine reports and OpenAI's shapes for them. Pure, no torch.

A logprob is the log-softmax of the model's raw next-token logits at that step (before temperature,
top-p or the JSON guide's mask), as vLLM reports by default: it says how likely the model found the
token, not how likely the sampler was to pick it. ``top`` holds the most likely tokens of the same
distribution, best first.

Shapes: chat ``choices[i].logprobs = {"content": [{"token", "logprob", "bytes", "top_logprobs"}],
"refusal": null}``; legacy completions ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``.
A token that is not whole UTF-8 on its own is named ``bytes:\\xNN…`` (as OpenAI does); ``bytes`` is
always exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from superollama.runtimes._request_error import RequestError

__all__ = [
    "MAX_CHAT_TOP",
    "MAX_COMPLETION_TOP",
    "Piece",
    "TokenLogprob",
    "chat_logprobs",
    "completion_logprobs",
    "parse_chat_logprobs",
    "parse_completion_logprobs",
    "token_text",
]

MAX_CHAT_TOP = 20
MAX_COMPLETION_TOP = 5


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its bytes, its logprob, the ``top`` alternatives as (bytes, logprob), and
    ``offset``, the character where its text starts in the completion."""

    raw: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()
    offset: int = 0


@dataclass(frozen=True)
class Piece:
    """Text the engine may send now, with the logprobs of the tokens that made it (when asked)."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


def token_text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def _entry(raw: bytes, logprob: float) -> dict[str, Any]:
    return {"token": token_text(raw), "logprob": logprob, "bytes": list(raw)}


def chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    content = [
        {**_entry(e.raw, e.logprob), "top_logprobs": [_entry(raw, lp) for raw, lp in e.top]} for e in entries
    ]
    return {"content": content, "refusal": None}


def completion_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    return {
        "tokens": [token_text(e.raw) for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{token_text(raw): lp for raw, lp in e.top} for e in entries],
        "text_offset": [e.offset for e in entries],
    }


def _top(value: Any, key: str, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise RequestError(f"'{key}' must be an integer from 0 to {most}", param=key)
    return value


def parse_chat_logprobs(body: Mapping[str, Any]) -> int | None:
    """How many top alternatives per token (0 to 20), or None when logprobs are off."""
    wanted, top = body.get("logprobs"), body.get("top_logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise RequestError("'logprobs' must be a boolean", param="logprobs")
    if top is not None and not wanted:
        raise RequestError("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    if not wanted:
        return None
    return 0 if top is None else _top(top, "top_logprobs", MAX_CHAT_TOP)


def parse_completion_logprobs(body: Mapping[str, Any]) -> int | None:
    """Legacy completions: ``logprobs: k`` (0 to 5) alternatives per token, or None."""
    value = body.get("logprobs")
    return None if value is None else _top(value, "logprobs", MAX_COMPLETION_TOP)
