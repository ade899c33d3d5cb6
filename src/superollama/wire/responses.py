"""OpenAI Responses API wire edge: request models and pure converters to and from OpenAI chat. No I/O.

A Responses request becomes one chat request: ``instructions`` → a leading ``system`` message (never
carried to a later response, as OpenAI documents), then the stored conversation of
``previous_response_id`` (chat messages, kept by the gateway), then the ``input`` items —

- a string → one user message; ``message`` items (with or without ``type``) → messages of their role,
  ``input_text`` parts joined, ``input_image`` parts as ``image_url`` parts, an assistant's
  ``output_text`` as its text;
- ``function_call`` items → an assistant message's ``tool_calls`` (consecutive calls share one);
  ``function_call_output`` → a ``tool`` message.

Function ``tools`` and ``tool_choice`` map to chat's; ``max_output_tokens`` → ``max_tokens``;
``text.format`` (``json_object`` / ``json_schema``) → ``response_format``. The answer becomes ``output``
items: a ``message`` with one ``output_text`` part, and a ``function_call`` item per tool call. What is
stored for chaining is the conversation as chat messages, the answer included (``conversation``).

A ``file_search`` tool is not a chat tool: the gateway searches the named vector stores before the chat
(the last user text is the query), gives the sources to the model in a system message, and answers with
a ``file_search_call`` item (``results`` only when ``include`` names ``file_search_call.results``) before
the message, whose ``output_text`` cites each source file once (``file_citation``; ``index``: the file's
position among the cited files, as the SDK documents it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
)

from superollama.errors import InvalidRequest
from superollama.wire.anthropic import parse

__all__ = [
    "FILE_SEARCH_RESULTS",
    "FileSearchTool",
    "Found",
    "ResponsesRequest",
    "chat_request",
    "citations",
    "conversation",
    "file_search_item",
    "last_user_text",
    "output_items",
    "parse",
    "response_id",
    "response_object",
    "usage",
]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputText(_Wire):
    type: Literal["input_text", "output_text", "text"]
    text: StrictStr


class InputImage(_Wire):
    type: Literal["input_image"]
    image_url: StrictStr | None = None
    detail: StrictStr | None = None


class Refusal(_Wire):
    type: Literal["refusal"]
    refusal: StrictStr


Part = Annotated[InputText | InputImage | Refusal, Field(discriminator="type")]


class MessageItem(_Wire):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: StrictStr | list[Part]


class FunctionCallItem(_Wire):
    type: Literal["function_call"]
    call_id: StrictStr
    name: StrictStr
    arguments: StrictStr


class FunctionCallOutputItem(_Wire):
    type: Literal["function_call_output"]
    call_id: StrictStr
    output: StrictStr | list[Part]


def _item_kind(value: Any) -> str:
    kind = value.get("type", "message") if isinstance(value, Mapping) else getattr(value, "type", "message")
    return str(kind)


Item = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(_item_kind),
]


class FunctionTool(_Wire):
    type: Literal["function"]
    name: Annotated[StrictStr, Field(min_length=1)]
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class RankingOptions(_Wire):
    ranker: Literal["auto", "default-2024-11-15", "none"] | None = None
    score_threshold: Annotated[StrictFloat | StrictInt, Field(ge=0, le=1)] | None = None


class FileSearchTool(_Wire):
    """Search the named vector stores (``/v1/vector_stores/{id}/search``) and answer from what is found."""

    type: Literal["file_search"]
    vector_store_ids: Annotated[list[Annotated[StrictStr, Field(min_length=1)]], Field(min_length=1)]
    max_num_results: Annotated[StrictInt, Field(ge=1, le=50)] | None = None
    filters: dict[str, Any] | None = None
    ranking_options: RankingOptions | None = None


Tool = Annotated[FunctionTool | FileSearchTool, Field(discriminator="type")]
FILE_SEARCH_RESULTS = "file_search_call.results"  # the ``include`` value that asks for the results


@dataclass(frozen=True, slots=True)
class Found:
    """One chunk a file search found."""

    file_id: str
    filename: str
    score: float
    text: str
    attributes: Mapping[str, Any]


class FunctionChoice(_Wire):
    type: Literal["function"]
    name: StrictStr


class FileSearchChoice(_Wire):
    """``{"type": "file_search"}``: search the files (done whenever the tool is given, but for ``none``)."""

    type: Literal["file_search"]


class TextFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"]
    name: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class TextOptions(_Wire):
    format: TextFormat | None = None


class ResponsesRequest(_Wire):
    """``POST /v1/responses``."""

    model: Annotated[StrictStr, Field(min_length=1)]
    input: StrictStr | list[Item]
    instructions: StrictStr | None = None
    previous_response_id: StrictStr | None = None
    store: StrictBool = True
    stream: StrictBool = False
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | FunctionChoice | FileSearchChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_output_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    metadata: dict[str, StrictStr] | None = None
    text: TextOptions | None = None
    user: StrictStr | None = None
    include: list[StrictStr] | None = None

    @property
    def functions(self) -> list[FunctionTool]:
        return [t for t in self.tools or () if isinstance(t, FunctionTool)]

    @property
    def file_search(self) -> FileSearchTool | None:
        """The ``file_search`` tool, if any (a 400 for more than one, or for choosing it without it)."""
        found = [t for t in self.tools or () if isinstance(t, FileSearchTool)]
        if len(found) > 1:
            raise InvalidRequest("only one file_search tool may be given", param="tools")
        if not found and isinstance(self.tool_choice, FileSearchChoice):
            raise InvalidRequest(
                "tool_choice names file_search, which tools does not hold", param="tool_choice"
            )
        return found[0] if found else None


# -- request → chat ---------------------------------------------------------------------------------------


def _text_of(content: str | list[Part]) -> str:
    if isinstance(content, str):
        return content
    return "".join(
        p.text if isinstance(p, InputText) else p.refusal for p in content if not isinstance(p, InputImage)
    )


def _message(item: MessageItem) -> dict[str, Any]:
    content = item.content
    if isinstance(content, str) or not any(isinstance(p, InputImage) for p in content):
        return {"role": item.role, "content": _text_of(content)}
    if item.role == "assistant":
        raise InvalidRequest("assistant messages cannot hold images", param="input")
    parts: list[dict[str, Any]] = []
    for p in content:
        if isinstance(p, InputImage):
            if not p.image_url:
                raise InvalidRequest(
                    "input_image needs an image_url (file_id is not supported)", param="input"
                )
            parts.append({"type": "image_url", "image_url": {"url": p.image_url}})
        else:
            parts.append({"type": "text", "text": p.text if isinstance(p, InputText) else p.refusal})
    return {"role": item.role, "content": parts}


def input_messages(items: str | Sequence[Any]) -> list[dict[str, Any]]:
    """The chat messages for ``input`` (parsed items)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, MessageItem):
            out.append(_message(item))
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": _text_of(item.output)})
    return out


def has_images(messages: Sequence[Mapping[str, Any]]) -> bool:
    return any(isinstance(m.get("content"), list) for m in messages)


def chat_request(
    req: ResponsesRequest, served_name: str, history: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The chat request: instructions, ``history`` (the previous response's conversation), the input."""
    messages: list[dict[str, Any]] = (
        [{"role": "system", "content": req.instructions}] if req.instructions else []
    )
    messages += [dict(m) for m in history]
    messages += input_messages(req.input)
    out: dict[str, Any] = {"model": served_name, "messages": messages}
    functions = req.functions
    if functions:
        out["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    **({"description": t.description} if t.description else {}),
                    "parameters": t.parameters or {"type": "object", "properties": {}},
                    **({"strict": t.strict} if t.strict is not None else {}),
                },
            }
            for t in functions
        ]
    chat_tools = functions or not req.tools  # file_search alone: no chat tools, no tool_choice
    if isinstance(req.tool_choice, FunctionChoice):
        out["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice.name}}
    elif isinstance(req.tool_choice, str) and chat_tools:
        out["tool_choice"] = req.tool_choice
    if req.parallel_tool_calls is not None and functions:
        out["parallel_tool_calls"] = req.parallel_tool_calls
    if req.max_output_tokens is not None:
        out["max_tokens"] = req.max_output_tokens
    for key in ("temperature", "top_p", "user"):
        if (value := getattr(req, key)) is not None:
            out[key] = value
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        schema = {"name": fmt.name or "output", "schema": fmt.schema_ or {}}
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": schema | ({"strict": fmt.strict} if fmt.strict is not None else {}),
        }
    if req.stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# -- chat answer → response -------------------------------------------------------------------------------


def response_id() -> str:
    return "resp_" + os.urandom(16).hex()


def item_id(prefix: str) -> str:
    return f"{prefix}_" + os.urandom(12).hex()


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text of the last user message (a file search's query); "" when there is none."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(
                str(p.get("text", ""))
                for p in content or ()
                if isinstance(p, Mapping) and p.get("type") == "text"
            )
    return ""


def file_search_item(
    fs_id: str,
    queries: Sequence[str],
    found: Sequence[Found] | None,
    *,
    status: str = "completed",
) -> dict[str, Any]:
    """A ``file_search_call`` output item; ``found`` None: the results were not asked for."""
    results = (
        None
        if found is None
        else [
            {
                "file_id": f.file_id,
                "filename": f.filename,
                "score": round(f.score, 6),
                "text": f.text,
                "attributes": dict(f.attributes),
            }
            for f in found
        ]
    )
    return {
        "type": "file_search_call",
        "id": fs_id,
        "status": status,
        "queries": list(queries),
        "results": results,
    }


def citations(found: Sequence[Found]) -> list[dict[str, Any]]:
    """One ``file_citation`` per source file, best first; ``index``: its place among them."""
    files: dict[str, str] = {}
    for f in found:
        files.setdefault(f.file_id, f.filename)
    return [
        {"type": "file_citation", "index": i, "file_id": file_id, "filename": filename}
        for i, (file_id, filename) in enumerate(files.items())
    ]


def message_item(
    text: str,
    *,
    status: str = "completed",
    msg_id: str | None = None,
    annotations: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    content = (
        [{"type": "output_text", "text": text, "annotations": [dict(a) for a in annotations], "logprobs": []}]
        if status == "completed"
        else []
    )
    return {
        "type": "message",
        "id": msg_id or item_id("msg"),
        "status": status,
        "role": "assistant",
        "content": content,
    }


def call_item(
    call_id: str, name: str, arguments: str, *, status: str = "completed", fc_id: str | None = None
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": fc_id or item_id("fc"),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def output_items(
    resp: Mapping[str, Any], annotations: Sequence[Mapping[str, Any]] = ()
) -> list[dict[str, Any]]:
    """The ``output`` items of a chat completion: its text as a message (with ``annotations``), each tool
    call as an item."""
    choice = (resp.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    out = [message_item(msg["content"], annotations=annotations)] if msg.get("content") else []
    for call in msg.get("tool_calls") or ():
        function = call.get("function") or {}
        out.append(
            call_item(
                call.get("id") or item_id("call"), function.get("name", ""), function.get("arguments") or "{}"
            )
        )
    return out


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def response_object(
    req: ResponsesRequest,
    resp_id: str,
    created_at: int,
    *,
    status: str = "completed",
    output: Sequence[Mapping[str, Any]] = (),
    counts: tuple[int, int] | None = None,
    finish: Any = None,
) -> dict[str, Any]:
    """The ``response`` object, with the request's settings echoed as OpenAI does."""
    if status == "completed" and finish == "length":
        status = "incomplete"
    fmt = (
        req.text.format.model_dump(by_alias=True, exclude_none=True)
        if req.text and req.text.format
        else {"type": "text"}
    )
    return {
        "id": resp_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": int(time.time()) if status in ("completed", "incomplete") else None,
        "model": req.model,
        "output": list(output),
        "instructions": req.instructions,
        "previous_response_id": req.previous_response_id,
        "store": req.store,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "tools": [t.model_dump(exclude_none=True) for t in req.tools or ()],
        "tool_choice": req.tool_choice.model_dump()
        if isinstance(req.tool_choice, BaseModel)
        else req.tool_choice or "auto",
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata or {},
        "text": {"format": fmt},
        "truncation": "disabled",
        "reasoning": None,
        "user": req.user,
        "usage": usage(*counts) if counts is not None else None,
    }


def conversation(
    req: ResponsesRequest, messages: Sequence[Mapping[str, Any]], output: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """What a later response continues from: the request's chat messages, less its instructions (the
    leading system message), and the answer as chat messages."""
    kept = [dict(m) for m in messages[1 if req.instructions else 0 :]]
    text = "".join(p["text"] for item in output if item["type"] == "message" for p in item["content"])
    calls = [
        {"id": i["call_id"], "type": "function", "function": {"name": i["name"], "arguments": i["arguments"]}}
        for i in output
        if i["type"] == "function_call"
    ]
    answer: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        answer["tool_calls"] = calls
    return [*kept, answer]
