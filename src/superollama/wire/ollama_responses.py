"""Ollama wire edge, the answers: OpenAI responses and SSE chunks → Ollama objects; model list shapes.

Pure functions, no I/O and no clock: times come in as arguments (``created_at`` strings, a ``Timing`` of
what the gateway measured), so the golden tests pin every field. Streaming goes through
``StreamTranslator``: one Ollama object per content delta, then one final object with ``done``,
``done_reason`` and the stats in nanoseconds (llama.cpp's ``timings`` when present, else measured).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from superollama.core import VersionRecord

__all__ = [
    "StreamTranslator",
    "Timing",
    "chat_response",
    "done_object",
    "embed_response",
    "embeddings",
    "error_message",
    "expires_at",
    "generate_response",
    "ps_entry",
    "response_text",
    "rfc3339",
    "show_response",
    "stats",
    "tag_entry",
]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def rfc3339(when: datetime) -> str:
    """Ollama's timestamps: RFC 3339 in UTC with microseconds, ``Z`` suffix."""
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def expires_at(now: datetime, seconds_left: float) -> datetime:
    """When an idle instance goes away; "forever" is shown far in the future, as Ollama does."""
    if math.isinf(seconds_left):
        return now + timedelta(days=365 * 292)
    return now + timedelta(seconds=max(0.0, seconds_left))


# -- responses ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """What the gateway measured, in nanoseconds; the backend's ``timings`` win where it sends them."""

    total_ns: int
    load_ns: int = 0
    prompt_ns: int = 0  # request sent → first token
    eval_ns: int = 0  # first token → last


def stats(
    timings: Mapping[str, Any] | None, usage: Mapping[str, Any] | None, timing: Timing
) -> dict[str, int]:
    """Ollama's final stats (nanoseconds) from llama.cpp's ``timings`` and the OpenAI ``usage``."""
    t, u = timings or {}, usage or {}

    def ns(key: str, measured: int) -> int:
        return round(float(t[key]) * 1e6) if _is_number(t.get(key)) else measured

    return {
        "total_duration": timing.total_ns,
        "load_duration": timing.load_ns,
        "prompt_eval_count": int(u.get("prompt_tokens", t.get("prompt_n", 0)) or 0),
        "prompt_eval_duration": ns("prompt_ms", timing.prompt_ns),
        "eval_count": int(u.get("completion_tokens", t.get("predicted_n", 0)) or 0),
        "eval_duration": ns("predicted_ms", timing.eval_ns),
    }


def _done_reason(finish: Any) -> str:
    return "length" if finish == "length" else "stop"  # tool_calls and content_filter end as "stop"


def _tool_calls(calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI tool calls (``arguments`` a JSON string) → Ollama's (``arguments`` an object)."""
    out = []
    for call in calls:
        fn = call.get("function") or {}
        args: Any = fn.get("arguments") or {}
        if isinstance(args, str):
            try:
                args = orjson.loads(args)
            except orjson.JSONDecodeError:
                args = {"arguments": args}
        args = args if isinstance(args, dict) else {"value": args}
        out.append({"function": {"name": fn.get("name", ""), "arguments": args}})
    return out


def _choice_text(choice: Mapping[str, Any]) -> str:
    if "text" in choice:  # completions
        return str(choice.get("text") or "")
    part = choice.get("delta") or choice.get("message") or {}
    return str(part.get("content") or "")


def response_text(resp: Mapping[str, Any]) -> str:
    """The generated text of a non-streamed completion or chat completion."""
    return _choice_text(_first_choice(resp))


def _first_choice(resp: Mapping[str, Any]) -> Mapping[str, Any]:
    choices = resp.get("choices") or [{}]
    return choices[0] if isinstance(choices[0], Mapping) else {}


def chat_response(resp: Mapping[str, Any], model: str, created_at: str, timing: Timing) -> dict[str, Any]:
    """A ``chat.completion`` → ``/api/chat``'s one object (``stream: false``)."""
    choice = _first_choice(resp)
    msg = choice.get("message") or {}
    message: dict[str, Any] = {"role": "assistant", "content": msg.get("content") or ""}
    if msg.get("reasoning_content"):
        message["thinking"] = msg["reasoning_content"]
    if msg.get("tool_calls"):
        message["tool_calls"] = _tool_calls(msg["tool_calls"])
    return {
        "model": model,
        "created_at": created_at,
        "message": message,
        "done": True,
        "done_reason": _done_reason(choice.get("finish_reason")),
        **stats(resp.get("timings"), resp.get("usage"), timing),
    }


def generate_response(
    resp: Mapping[str, Any], model: str, created_at: str, timing: Timing, context: list[int] | None = None
) -> dict[str, Any]:
    """A ``text_completion`` (or a ``chat.completion``, for images) → ``/api/generate``'s one object."""
    choice = _first_choice(resp)
    out = {
        "model": model,
        "created_at": created_at,
        "response": _choice_text(choice),
        "done": True,
        "done_reason": _done_reason(choice.get("finish_reason")),
        **stats(resp.get("timings"), resp.get("usage"), timing),
    }
    if context is not None:
        out["context"] = context
    return out


def done_object(model: str, created_at: str, reason: str, *, chat: bool) -> dict[str, Any]:
    """The answer to an empty prompt/messages: the model was loaded (``load``) or unloaded (``unload``)."""
    out: dict[str, Any] = {"model": model, "created_at": created_at}
    out.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
    return {**out, "done": True, "done_reason": reason}


class StreamTranslator:
    """OpenAI SSE chunks (chat or completions) → Ollama stream objects for ``/api/chat`` (``chat=True``)
    or ``/api/generate``. ``feed`` each chunk; ``final`` builds the closing object with the stats.
    Tool calls arrive in pieces over several chunks; they go out whole, in one object, at the finish."""

    def __init__(self, model: str, *, chat: bool) -> None:
        self.model = model
        self.chat = chat
        self.text = ""
        self.finish_reason: str | None = None
        self.usage: Mapping[str, Any] | None = None
        self.timings: Mapping[str, Any] | None = None
        self._calls: dict[int, dict[str, str]] = {}

    def _piece(self, created_at: str, text: str, thinking: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": created_at}
        if self.chat:
            out["message"] = {"role": "assistant", "content": text}
            if thinking:
                out["message"]["thinking"] = thinking
        else:
            out["response"] = text
            if thinking:
                out["thinking"] = thinking
        out["done"] = False
        return out

    def feed(self, chunk: Mapping[str, Any], created_at: str) -> list[dict[str, Any]]:
        self.usage = chunk.get("usage") or self.usage
        self.timings = chunk.get("timings") or self.timings
        out = []
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text, thinking = _choice_text(choice), delta.get("reasoning_content")
            for call in delta.get("tool_calls") or []:
                slot = self._calls.setdefault(int(call.get("index", 0)), {"name": "", "arguments": ""})
                fn = call.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            if text or thinking:
                self.text += text
                out.append(self._piece(created_at, text, thinking))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                if self._calls and self.chat:
                    piece = self._piece(created_at, "")
                    calls = [{"function": c} for _, c in sorted(self._calls.items())]
                    piece["message"]["tool_calls"] = _tool_calls(calls)
                    out.append(piece)
        return out

    def final(self, created_at: str, timing: Timing, context: list[int] | None = None) -> dict[str, Any]:
        out = self._piece(created_at, "")
        out.update(done=True, done_reason=_done_reason(self.finish_reason))
        out.update(stats(self.timings, self.usage, timing))
        if context is not None:
            out["context"] = context
        return out


# -- embeddings ---------------------------------------------------------------------------------------------
def _fit(vector: list[float], dimensions: int | None) -> list[float]:
    """Cut to ``dimensions`` and re-normalize (as Ollama does) when the backend returned more."""
    if dimensions is None or dimensions >= len(vector):
        return vector
    cut = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in cut))
    return [x / norm for x in cut] if norm else cut


def embeddings(resp: Mapping[str, Any], dimensions: int | None = None) -> list[list[float]]:
    rows = sorted(resp.get("data") or [], key=lambda d: d.get("index", 0))
    return [_fit(list(row["embedding"]), dimensions) for row in rows]


def embed_response(
    resp: Mapping[str, Any], model: str, timing: Timing, dimensions: int | None = None
) -> dict[str, Any]:
    """``/v1/embeddings`` → ``/api/embed``'s object."""
    usage = resp.get("usage") or {}
    return {
        "model": model,
        "embeddings": embeddings(resp, dimensions),
        "total_duration": timing.total_ns,
        "load_duration": timing.load_ns,
        "prompt_eval_count": int(usage.get("prompt_tokens", 0) or 0),
    }


# -- models ---------------------------------------------------------------------------------------------
def _digest(digest: str) -> str:
    return digest.removeprefix("sha256:")


def _modified(v: VersionRecord) -> str:
    return rfc3339(v.updated_at or v.created_at or datetime(1970, 1, 1, tzinfo=UTC))


def _details(v: VersionRecord) -> dict[str, Any]:
    arch = v.metadata.get("architecture") or ""
    return {
        "parent_model": "",
        "format": v.format,
        "family": arch,
        "families": [arch] if arch else None,
        "parameter_size": v.metadata.get("parameter_size") or "",
        "quantization_level": v.metadata.get("quantization") or "",
    }


def tag_entry(v: VersionRecord) -> dict[str, Any]:
    """One model of ``/api/tags``."""
    return {
        "name": v.name,
        "model": v.name,
        "modified_at": _modified(v),
        "size": v.size,
        "digest": _digest(v.digest),
        "details": _details(v),
    }


def connection_tag_entry(name: str, created: int) -> dict[str, Any]:
    """A model of an external connection in ``/api/tags`` (its files are not ours: no size or digest)."""
    modified = datetime.fromtimestamp(created, UTC) if created else datetime.now(UTC)
    details = {"format": "", "family": "", "families": None, "parameter_size": "", "quantization_level": ""}
    return {
        "name": name,
        "model": name,
        "modified_at": rfc3339(modified),
        "size": 0,
        "digest": "",
        "details": details,
    }


def ps_entry(v: VersionRecord, expires: datetime) -> dict[str, Any]:
    """One running model of ``/api/ps`` (CPU instances: ``size_vram`` is 0)."""
    out = {k: val for k, val in tag_entry(v).items() if k != "modified_at"}
    return {**out, "expires_at": rfc3339(expires), "size_vram": 0}


def show_response(v: VersionRecord, capabilities: Sequence[str]) -> dict[str, Any]:
    """``/api/show``. ``template`` is the model's own chat template (Jinja in GGUF files, not Go)."""
    template = str(v.metadata.get("chat_template") or "")
    caps = list(capabilities)
    if "tools" in template and "tools" not in caps:
        caps.append("tools")
    modelfile = f'# Modelfile generated by "superollama show"\nFROM {v.source or v.name}\n'
    if template:
        modelfile += f'TEMPLATE """{template}"""\n'
    return {
        "modelfile": modelfile,
        "parameters": "",
        "template": template,
        "details": _details(v),
        "model_info": dict(v.metadata.get("model_info") or {}) or None,
        "capabilities": caps,
        "modified_at": _modified(v),
    }


def error_message(raw: bytes, fallback: str) -> str:
    """The message inside a backend's error body (OpenAI envelope, llama.cpp's, or plain text)."""
    text = raw.decode("utf-8", "replace")[:2000]
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return text.strip() or fallback
    inner = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
    if isinstance(inner, dict):
        return str(inner.get("message") or fallback)
    return str(inner) if inner else fallback
