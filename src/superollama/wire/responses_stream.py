"""An OpenAI chat completion stream, turned into the Responses API's semantic events. Pure.

Every event carries ``type`` and a ``sequence_number`` counting from 0. The order::

    response.created → response.in_progress
    [file search: output_item.added → file_search_call.in_progress → file_search_call.searching
                  → file_search_call.completed → output_item.done]
    per output item, in order:
      text:  output_item.added → content_part.added → output_text.delta*
             → output_text.annotation.added* → output_text.done → content_part.done → output_item.done
      call:  output_item.added → function_call_arguments.delta* → function_call_arguments.done
             → output_item.done
    response.completed (the whole response, usage included)

An item is finished before the next one starts (the SDK accumulates by ``output_index``). The events are
sent as ``event: <type>`` + ``data:`` SSE, as OpenAI does. The file search ran before the stream opened
(its errors are the HTTP status); its events tell what it did, in the order OpenAI sends them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from superollama.wire import responses as wire

if TYPE_CHECKING:
    from superollama.wire.responses import Found, ResponsesRequest

__all__ = ["ResponseStream", "sse"]


def sse(event: Mapping[str, Any]) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class ResponseStream:
    def __init__(self, req: ResponsesRequest, resp_id: str, created_at: int) -> None:
        self._req = req
        self._id = resp_id
        self._created = created_at
        self._seq = 0
        self.output: list[dict[str, Any]] = []
        self._open: int | None = None  # output index of the item not yet done
        self._calls: dict[int, int] = {}  # chat tool-call index → output index
        self.finish: Any = None
        self.counts: tuple[int, int] | None = None
        self.text = ""
        self.annotations: list[dict[str, Any]] = []  # the message's citations (a file search's sources)

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def snapshot(self, status: str) -> dict[str, Any]:
        return wire.response_object(
            self._req,
            self._id,
            self._created,
            status=status,
            output=self.output,
            counts=self.counts,
            finish=self.finish,
        )

    def start(self) -> list[dict[str, Any]]:
        return [
            self._event("response.created", response=self.snapshot("in_progress")),
            self._event("response.in_progress", response=self.snapshot("in_progress")),
        ]

    def file_search(self, fs_id: str, queries: list[str], found: list[Found] | None) -> list[dict[str, Any]]:
        """The events of a file search (done before the stream opened): its item, added then done."""
        item = wire.file_search_item(fs_id, queries, None, status="in_progress")
        self.output.append(item)
        index = len(self.output) - 1
        common = {"item_id": fs_id, "output_index": index}
        out = [
            self._event("response.output_item.added", output_index=index, item=dict(item)),
            self._event("response.file_search_call.in_progress", **common),
            self._event("response.file_search_call.searching", **common),
        ]
        self.output[index] = item = wire.file_search_item(fs_id, queries, found)
        out.append(self._event("response.file_search_call.completed", **common))
        out.append(self._event("response.output_item.done", output_index=index, item=dict(item)))
        return out

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        counts = chunk.get("usage")
        if isinstance(counts, Mapping):
            self.counts = (int(counts.get("prompt_tokens") or 0), int(counts.get("completion_tokens") or 0))
        out: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if text := delta.get("content"):
                out += self._text(text)
            for call in delta.get("tool_calls") or ():
                out += self._call(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def _text(self, text: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self._open is None or self.output[self._open]["type"] != "message":
            out += self._close()
            item = wire.message_item("", status="in_progress")
            self.output.append(item)
            self._open = index = len(self.output) - 1
            out.append(
                self._event("response.output_item.added", output_index=index, item=dict(item, content=[]))
            )
            item["content"] = [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]
            part = {"type": "output_text", "text": "", "annotations": []}
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                )
            )
        index = self._open
        item = self.output[index]
        item["content"][0]["text"] += text
        self.text += text
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def _call(self, call: Mapping[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        position = int(call.get("index") or 0)
        function = call.get("function") or {}
        if position not in self._calls:
            out += self._close()
            item = wire.call_item(
                call.get("id") or wire.item_id("call"), function.get("name") or "", "", status="in_progress"
            )
            self.output.append(item)
            self._open = self._calls[position] = len(self.output) - 1
            out.append(self._event("response.output_item.added", output_index=self._open, item=dict(item)))
        index = self._calls[position]
        if fragment := function.get("arguments"):
            self.output[index]["arguments"] += fragment
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=self.output[index]["id"],
                    output_index=index,
                    delta=fragment,
                )
            )
        return out

    def _close(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        item = self.output[index]
        item["status"] = "completed"
        out: list[dict[str, Any]] = []
        if item["type"] == "message":
            part = item["content"][0]
            common = {"item_id": item["id"], "output_index": index, "content_index": 0}
            for n, annotation in enumerate(self.annotations):
                part["annotations"].append(annotation)
                out.append(
                    self._event(
                        "response.output_text.annotation.added",
                        **common,
                        annotation_index=n,
                        annotation=dict(annotation),
                    )
                )
            out.append(self._event("response.output_text.done", **common, text=part["text"], logprobs=[]))
            out.append(self._event("response.content_part.done", **common, part=dict(part)))
        else:
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        out.append(self._event("response.output_item.done", output_index=index, item=dict(item)))
        return out

    def end(self) -> list[dict[str, Any]]:
        out = self._close()
        final = self.snapshot("completed")
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        return [*out, self._event(kind, response=final)]

    def failed(self, message: str) -> list[dict[str, Any]]:
        """A stream that broke: ``response.failed`` with the error (the headers are already sent)."""
        final = self.snapshot("failed")
        final["error"] = {"code": "server_error", "message": message}
        return [self._event("response.failed", response=final)]
