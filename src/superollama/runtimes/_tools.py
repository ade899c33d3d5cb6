"""Function calling for our own workers: parse ``tools``/``tool_choice``, render them for a chat template,
read calls back out of the generated text. Pure, no torch.

How a model is asked: a chat template that renders ``tools`` gets them as they are; otherwise a system
preamble lists them as JSON and asks for ``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` (the
Hermes/Qwen convention). Earlier turns render the same way: an assistant's ``tool_calls`` and ``tool``
results pass to a template that knows them, or become text (``<tool_call>`` / ``<tool_response>``).

How calls come back: ``auto`` generates freely and :func:`extract_calls` reads ``<tool_call>`` blocks (or
a bare ``{"name", "arguments"}`` answer) naming an offered function; ``required`` and a named function
generate under the JSON guide with :func:`call_node`'s schema, so the call is valid by construction
(one call: ``parallel_tool_calls: false`` matters in ``auto`` only, where it keeps the first). ``none``
leaves the tools out of the prompt, so the model answers in text.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from superollama.runtimes._json_schema import Node, SchemaError, compile_schema
from superollama.runtimes._request_error import RequestError

__all__ = [
    "Tool",
    "ToolCall",
    "ToolParams",
    "ToolStream",
    "call_node",
    "extract_calls",
    "message_tool_fields",
    "parse_tools",
    "render_history",
    "with_preamble",
]

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_EMPTY_PARAMETERS: Mapping[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: Mapping[str, Any]

    def as_openai(self) -> dict[str, Any]:
        function = {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolParams:
    """``choice``: "none", "auto", "required" or "function" (then ``forced`` names it)."""

    tools: tuple[Tool, ...]
    choice: str = "auto"
    forced: str | None = None
    parallel: bool = True

    @property
    def active(self) -> bool:
        return self.choice != "none"

    @property
    def guided(self) -> bool:
        return self.choice in ("required", "function")


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as text

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def _tool(raw: Any, i: int) -> Tool:
    where = f"tools[{i}]"
    if not isinstance(raw, Mapping) or raw.get("type") != "function":
        raise RequestError(f"{where} must be {{'type': 'function', 'function': {{…}}}}", param=where)
    function = raw.get("function")
    if not isinstance(function, Mapping):
        raise RequestError(f"{where}.function must be an object", param=f"{where}.function")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RequestError(
            f"{where}.function.name must be 1 to 64 letters, digits, '_' or '-'",
            param=f"{where}.function.name",
        )
    description = function.get("description") or ""
    parameters = function.get("parameters")
    parameters = _EMPTY_PARAMETERS if parameters is None else parameters
    if not isinstance(description, str) or not isinstance(parameters, Mapping):
        raise RequestError(f"{where}.function has a bad description or parameters", param=f"{where}.function")
    return Tool(name, description, parameters)


def parse_tools(body: Mapping[str, Any]) -> ToolParams | None:
    raw, choice = body.get("tools"), body.get("tool_choice")
    if raw is None or raw == []:
        if choice not in (None, "none"):
            raise RequestError("'tool_choice' needs 'tools'", param="tool_choice")
        return None
    if not isinstance(raw, list):
        raise RequestError("'tools' must be a list", param="tools")
    tools = tuple(_tool(t, i) for i, t in enumerate(raw))
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise RequestError("two tools have the same name", param="tools")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise RequestError("'parallel_tool_calls' must be a boolean", param="parallel_tool_calls")
    if choice is None or choice in ("none", "auto", "required"):
        return ToolParams(tools, choice or "auto", None, parallel)
    forced = choice.get("function", {}).get("name") if isinstance(choice, Mapping) else None
    if not isinstance(choice, Mapping) or choice.get("type") != "function" or forced not in names:
        raise RequestError(
            "'tool_choice' must be 'none', 'auto', 'required' or "
            "{'type': 'function', 'function': {'name': <one of the tools>}}",
            param="tool_choice",
        )
    return ToolParams(tools, "function", str(forced), parallel)


def call_node(params: ToolParams) -> Node:
    """The schema of one call to an offered function (the one ``tool_choice`` names, if it does)."""
    alternatives = []
    for i, tool in enumerate(params.tools):
        if params.forced is not None and tool.name != params.forced:
            continue
        try:
            compile_schema(tool.parameters)
        except SchemaError as exc:
            raise RequestError(
                f"tools[{i}].function.parameters cannot be guaranteed: {exc}",
                param=f"tools[{i}].function.parameters",
                code="unsupported_schema",
            ) from exc
        alternatives.append(
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    return compile_schema(alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives})


def preamble(tools: Sequence[Tool]) -> str:
    listed = "\n".join(json.dumps(t.as_openai(), ensure_ascii=False) for t in tools)
    return (
        "You can call these functions (each one's parameters is a JSON Schema):\n"
        f"<tools>\n{listed}\n</tools>\n"
        "To call a function, answer with one block per call and nothing else:\n"
        f'{OPEN}{{"name": <function name>, "arguments": <arguments as a JSON object>}}{CLOSE}\n'
        "A function's result comes back in a <tool_response> block. If no function helps, answer normally."
    )


def with_preamble(messages: Sequence[Mapping[str, Any]], tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """The messages with the tools' preamble added to the system message (or as a first one)."""
    out = [dict(m) for m in messages]
    text = preamble(tools)
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0].get('content') or ''}\n\n{text}".lstrip()
    else:
        out.insert(0, {"role": "system", "content": text})
    return out


def _arguments_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def render_history(messages: Sequence[Mapping[str, Any]], *, structured: bool) -> list[dict[str, Any]]:
    """Messages for ``apply_chat_template``: tool calls and results as the template's own fields when
    it renders them (``structured``), else as text blocks in plain user/assistant turns."""
    out: list[dict[str, Any]] = []
    for message in messages:
        m = dict(message)
        calls = m.pop("tool_calls", None) or []
        if structured:
            if calls:
                m["tool_calls"] = [
                    {
                        **c,
                        "function": {
                            **c["function"],
                            "arguments": _arguments_value(c["function"]["arguments"]),
                        },
                    }
                    for c in calls
                ]
            out.append(m)
            continue
        if calls:
            blocks = [_call_block(c["function"]["name"], c["function"]["arguments"]) for c in calls]
            m["content"] = "\n".join([m["content"], *blocks] if m.get("content") else blocks)
        if m["role"] == "tool":
            m = {"role": "user", "content": f"<tool_response>\n{m.get('content', '')}\n</tool_response>"}
        out.append(m)
    return out


def _call_block(name: str, arguments: str) -> str:
    return f'{OPEN}{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {arguments}}}{CLOSE}'


def message_tool_fields(message: Mapping[str, Any], i: int) -> dict[str, Any]:
    """The tool fields of ``messages[i]`` to keep: an assistant's ``tool_calls``, a tool's call id."""
    out: dict[str, Any] = {}
    if message.get("role") == "tool":
        call_id = message.get("tool_call_id")
        if call_id is not None and not isinstance(call_id, str):
            raise RequestError("'tool_call_id' must be a string", param=f"messages[{i}].tool_call_id")
        out["tool_call_id"] = call_id or ""
    calls = message.get("tool_calls")
    if calls in (None, []):
        return out
    where = f"messages[{i}].tool_calls"
    if message.get("role") != "assistant" or not isinstance(calls, list):
        raise RequestError("'tool_calls' must be a list in an assistant message", param=where)
    kept = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        arguments = function.get("arguments", "{}") if isinstance(function, Mapping) else None
        if not isinstance(name, str) or not isinstance(arguments, str):
            raise RequestError(
                "a tool call needs function.name and function.arguments", param=f"{where}[{j}]"
            )
        call_id = str(call.get("id") or f"call_{j}")
        kept.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
    out["tool_calls"] = kept
    return out


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _call(text: str, names: Sequence[str]) -> ToolCall | None:
    """A call from a ``{"name", "arguments"}`` object that names an offered function, or None."""
    text = text.strip()
    fenced = _FENCE.match(text)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        return None
    if not isinstance(value, Mapping) or value.get("name") not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, Mapping):
        return None
    return ToolCall(_new_id(), str(value["name"]), json.dumps(arguments, ensure_ascii=False))


def _split(text: str, params: ToolParams) -> tuple[str, list[ToolCall]]:
    """The text outside the calls, and the calls, in order."""
    names = [t.name for t in params.tools]
    if params.guided:
        call = _call(text, names)
        return ("", [call]) if call is not None else (text, [])
    outside, calls, pos = [], [], 0
    while (begin := text.find(OPEN, pos)) >= 0:
        outside.append(text[pos:begin])
        end = text.find(CLOSE, begin)
        stop = len(text) if end < 0 else end + len(CLOSE)
        call = _call(text[begin + len(OPEN) : len(text) if end < 0 else end], names)
        if call is None:
            outside.append(text[begin:stop])
        else:
            calls.append(call)
        pos = stop
    outside.append(text[pos:])
    if not calls and (bare := _call(text, names)) is not None:
        return "", [bare]
    return "".join(outside), calls if params.parallel else calls[:1]


def extract_calls(text: str, params: ToolParams) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of a generated text: content is the text outside the calls (None when empty)."""
    outside, calls = _split(text, params)
    if not calls:
        return text, []
    return outside.strip() or None, calls


class ToolStream:
    """Streams content until the text may be turning into a call, then holds the rest for the end:
    ``feed(delta)`` returns the content that can go out now, ``finish()`` the rest and the calls."""

    def __init__(self, params: ToolParams) -> None:
        self.params = params
        self.text = ""
        self.sent = 0
        self.holding = params.guided

    def feed(self, delta: str) -> str:
        self.text += delta
        if self.holding:
            return ""
        rest = self.text[self.sent :]
        if not self.text[: self.sent].strip():  # nothing but whitespace went out yet
            stripped = rest.lstrip()
            if stripped.startswith(("{", "```")):
                self.holding = True  # a bare JSON call may be starting
                return ""
            if "```".startswith(stripped):
                return ""  # whitespace, or a fence still forming: wait to see what follows
        found = rest.find(OPEN)
        if found >= 0:
            self.holding = True
            return self._release(found)
        hold = next((k for k in range(min(len(OPEN) - 1, len(rest)), 0, -1) if rest.endswith(OPEN[:k])), 0)
        return self._release(len(rest) - hold)

    def _release(self, count: int) -> str:
        out = self.text[self.sent : self.sent + count]
        self.sent += count
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        outside, calls = _split(self.text, self.params)
        if not calls:
            return self._release(len(self.text) - self.sent), []
        tail = outside[self.sent :].rstrip()
        return (tail if tail.strip() else ""), calls
