"""The bodies a worker answers with, from what the engine produced: plain responses and SSE chunk streams
for chat (content, tool calls, logprobs) and legacy completions. Pure, no torch.

A stream is shaped by an object with ``first()``, ``piece(piece)`` and ``end(finish, usage)``, each
returning the chunks to send. With tools offered, chat content streams until the text may be turning
into a call; the rest is held and, at the end, sent as ``delta.tool_calls`` in OpenAI's streaming shape
(a first delta with index, id, type, name and empty arguments, then the arguments) or as content when it
was no call after all. Logprobs of held text go out with the next chunk that is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from superollama.runtimes._logprobs import Piece, TokenLogprob
from superollama.runtimes._openai_shapes import ChatParams, CompletionParams, Reply
from superollama.runtimes._tools import ToolCall, ToolStream, extract_calls

if TYPE_CHECKING:
    from superollama.runtimes._hf_engine import Outcome

__all__ = ["ChatStream", "CompletionStream", "StreamShaper", "chat_response", "completion_response"]

Chunk = dict[str, Any]


class StreamShaper(Protocol):
    def first(self) -> list[Chunk]: ...
    def piece(self, piece: Piece) -> list[Chunk]: ...
    def end(self, finish: str, use: Mapping[str, int]) -> list[Chunk]: ...


def chat_response(reply: Reply, params: ChatParams, out: Outcome, use: Mapping[str, int]) -> Chunk:
    logprobs = out.logprobs if params.sampling.logprobs is not None else None
    tools, finish = params.tools, out.finish_reason
    if tools is None or not tools.active:
        return reply.chat(out.text, finish, use, logprobs=logprobs)
    content, calls = extract_calls(out.text, tools)
    if calls and finish == "stop":
        finish = "tool_calls"
    return reply.chat(content, finish, use, logprobs=logprobs, tool_calls=calls)


def completion_response(
    reply: Reply, params: CompletionParams, out: Outcome, use: Mapping[str, int]
) -> Chunk:
    logprobs = out.logprobs if params.sampling.logprobs is not None else None
    return reply.completion(out.text, out.finish_reason, use, logprobs)


def _call_deltas(index: int, call: ToolCall) -> tuple[Chunk, Chunk]:
    head = {
        "index": index,
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": ""},
    }
    return {"tool_calls": [head]}, {
        "tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]
    }


class ChatStream:
    def __init__(self, reply: Reply, params: ChatParams) -> None:
        self.reply = reply
        self.usage = params.include_usage
        self.logprobs = params.sampling.logprobs is not None
        tools = params.tools
        self.tools = ToolStream(tools) if tools is not None and tools.active else None
        self.held: list[TokenLogprob] = []

    def _chunk(self, delta: Mapping[str, Any], finish: str | None = None) -> Chunk:
        entries = None
        if self.logprobs and finish is None:
            entries, self.held = self.held, []
        return self.reply.chat_chunk(delta, finish, self.usage, entries)

    def first(self) -> list[Chunk]:
        return [self.reply.chat_chunk({"role": "assistant", "content": ""}, None, self.usage)]

    def piece(self, piece: Piece) -> list[Chunk]:
        self.held.extend(piece.logprobs)
        text = piece.text if self.tools is None else self.tools.feed(piece.text)
        if text or (self.tools is None and self.held):
            return [self._chunk({"content": text})]
        return []

    def end(self, finish: str, use: Mapping[str, int]) -> list[Chunk]:
        chunks: list[Chunk] = []
        calls: list[ToolCall] = []
        if self.tools is not None:
            tail, calls = self.tools.finish()
            if tail or (self.held and not calls):
                chunks.append(self._chunk({"content": tail}))
        for i, call in enumerate(calls):
            head, arguments = _call_deltas(i, call)
            chunks += [self._chunk(head), self._chunk(arguments)]
        if calls and finish == "stop":
            finish = "tool_calls"
        chunks.append(self._chunk({}, finish))
        if self.usage:
            chunks.append(self.reply.usage_chunk("chat.completion.chunk", use))
        return chunks


class CompletionStream:
    def __init__(self, reply: Reply, params: CompletionParams) -> None:
        self.reply = reply
        self.usage = params.include_usage
        self.logprobs = params.sampling.logprobs is not None

    def first(self) -> list[Chunk]:
        return []

    def piece(self, piece: Piece) -> list[Chunk]:
        entries = piece.logprobs if self.logprobs else None
        return [self.reply.completion_chunk(piece.text, None, self.usage, entries)]

    def end(self, finish: str, use: Mapping[str, int]) -> list[Chunk]:
        chunks = [self.reply.completion_chunk("", finish, self.usage)]
        if self.usage:
            chunks.append(self.reply.usage_chunk("text_completion", use))
        return chunks
