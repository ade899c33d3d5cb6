"""An OpenAI chat completion stream, turned into the Anthropic Messages stream, event by event. Pure.

The event sequence (what the Anthropic SDKs accumulate, by ``index``)::

    message_start  → ping → (content_block_start → content_block_delta* → content_block_stop)*
                   → message_delta (stop_reason, stop_sequence, cumulative usage) → message_stop

Text deltas become ``text_delta``s of one ``text`` block; each tool call (by its OpenAI ``index``)
becomes a ``tool_use`` block whose ``arguments`` fragments are ``input_json_delta``s. A block is closed
before the next one opens. The prompt's token count is known only at the end of an OpenAI stream, so
``message_start`` says 0 and ``message_delta`` carries the real ``input_tokens`` (the SDKs take it from
there: usage on ``message_delta`` is cumulative).

``StopScanner`` finds the client's ``stop_sequences`` in the text as it streams, holding back only the
few characters that could be the start of one, so the answer ends exactly before the sequence and
``stop_reason`` can say ``stop_sequence`` (the backend is never told: see ``wire.anthropic``).

The translator also keeps the blocks it has sent, so a non-streamed answer that had to be read as a
stream (to watch for stop sequences) is built from the same state (``message``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from superollama.wire import anthropic as wire

__all__ = ["Event", "StopScanner", "StreamTranslator"]

Event = tuple[str, dict[str, Any]]


class StopScanner:
    """Text in, text out, cut before the first stop sequence it contains."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """What may be sent of ``text`` now (after what was held back)."""
        if self.matched is not None:
            return ""
        buffer = self._held + text
        found = [(buffer.find(s), s) for s in self._stops if s in buffer]
        if found:
            at, stop = min(found)
            self.matched, self._held = stop, ""
            return buffer[:at]
        keep = max((k for s in self._stops for k in range(1, len(s)) if buffer.endswith(s[:k])), default=0)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """The text held back, at the end of the stream (it started a stop sequence that never came)."""
        held, self._held = self._held, ""
        return held


class StreamTranslator:
    def __init__(self, model: str, msg_id: str, stops: Sequence[str] = ()) -> None:
        self._model = model
        self._id = msg_id
        self._scanner = StopScanner(stops)
        self._open: int | None = None  # index of the block not yet stopped
        self._tools: dict[int, int] = {}  # OpenAI tool-call index → our block index
        self.blocks: list[dict[str, Any]] = []
        self._json: dict[int, str] = {}  # a tool_use block's arguments so far
        self.finish: Any = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.text = ""

    @property
    def stop(self) -> str | None:
        """The stop sequence that ended the answer, if one did."""
        return self._scanner.matched

    def start(self) -> list[Event]:
        head: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": wire.usage(0, 0),
        }
        return [("message_start", {"type": "message_start", "message": head}), ("ping", {"type": "ping"})]

    def feed(self, chunk: Mapping[str, Any]) -> list[Event]:
        """The events for one OpenAI chunk; none once a stop sequence was found."""
        counts = chunk.get("usage")
        if isinstance(counts, Mapping):
            self.prompt_tokens = int(counts.get("prompt_tokens") or 0)
            self.completion_tokens = int(counts.get("completion_tokens") or 0)
        out: list[Event] = []
        for choice in chunk.get("choices") or ():
            if self.stop is not None:
                break
            delta = choice.get("delta") or {}
            if text := delta.get("content"):
                out += self._text(self._scanner.feed(text))
            for call in delta.get("tool_calls") or ():
                out += self._tool(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def _text(self, text: str) -> list[Event]:
        if not text:
            return []
        out: list[Event] = []
        if self._open is None or self.blocks[self._open]["type"] != "text":
            out += self._begin({"type": "text", "text": ""})
        assert self._open is not None
        self.blocks[self._open]["text"] += text
        self.text += text
        delta = {"type": "text_delta", "text": text}
        return [
            *out,
            ("content_block_delta", {"type": "content_block_delta", "index": self._open, "delta": delta}),
        ]

    def _tool(self, call: Mapping[str, Any]) -> list[Event]:
        out: list[Event] = []
        position = int(call.get("index") or 0)
        function = call.get("function") or {}
        if position not in self._tools:
            block = {"type": "tool_use", "id": call.get("id") or f"toolu_{self._id[4:]}_{position}"}
            block |= {"name": function.get("name") or "", "input": {}}
            out += self._begin(block)
            assert self._open is not None
            self._tools[position] = self._open
            self._json[self._open] = ""
        index = self._tools[position]
        if fragment := function.get("arguments"):
            self._json[index] += fragment
            delta = {"type": "input_json_delta", "partial_json": fragment}
            out.append(
                ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            )
        return out

    def _begin(self, block: dict[str, Any]) -> list[Event]:
        out = self._close()
        self.blocks.append(block)
        self._open = len(self.blocks) - 1
        start = {"type": "content_block_start", "index": self._open, "content_block": dict(block)}
        return [*out, ("content_block_start", start)]

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        if index in self._json:
            self.blocks[index]["input"] = wire.tool_input(self._json[index])
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def stop_reason(self) -> str:
        if self.stop is not None:
            return "stop_sequence"
        reason = wire.stop_reason(self.finish)
        return "tool_use" if reason == "end_turn" and self._tools else reason

    def end(self) -> list[Event]:
        """The closing events: the last block's stop, ``message_delta`` with usage, ``message_stop``."""
        out = self._text(self._scanner.flush()) if self.stop is None else []
        out += self._close()
        delta = {"stop_reason": self.stop_reason(), "stop_sequence": self.stop}
        counts = wire.usage(self.prompt_tokens or 0, self.completion_tokens or 0)
        out.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": counts}))
        out.append(("message_stop", {"type": "message_stop"}))
        return out

    def message(self) -> dict[str, Any]:
        """The whole ``Message`` (call after ``end``)."""
        return {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": self.blocks,
            "stop_reason": self.stop_reason(),
            "stop_sequence": self.stop,
            "usage": wire.usage(self.prompt_tokens or 0, self.completion_tokens or 0),
        }
