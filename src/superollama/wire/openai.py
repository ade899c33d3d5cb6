"""OpenAI wire edge: request checks and error/list shapes. Pure functions, no I/O.

The gateway relays same-protocol requests byte-for-byte apart from ``model``, so only the fields a
backend would choke on, or that we need ourselves, are checked here — with OpenAI's messages, ``param``
naming the field, so the official SDKs raise a ``BadRequestError`` a user can act on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from superollama.errors import InvalidRequest, SuperOllamaError
from superollama.wire._numbers import INT32_MAX, INT64_MAX, INT64_MIN, Bound, kind_of, problem

__all__ = [
    "USAGE_KEY",
    "USAGE_OBJECT",
    "check_chat",
    "check_completion",
    "check_embeddings",
    "error_body",
    "find_usage",
    "model_list",
    "model_object",
]

_ENCODINGS = ("float", "base64")


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


# Numeric fields and the ranges the backends accept (see ``_numbers``): OpenAI's documented ranges for its
# own fields; for the llama.cpp/vLLM extensions that are relayed as they are, the int32 they are read into.
_COMMON_NUMBERS: tuple[tuple[str, Bound], ...] = (
    ("max_tokens", Bound(True, 1, INT32_MAX)),
    ("max_completion_tokens", Bound(True, 1, INT32_MAX)),
    ("n", Bound(True, 1, 128)),
    ("seed", Bound(True, INT64_MIN, INT64_MAX)),
    ("temperature", Bound(False, 0, 2)),
    ("top_p", Bound(False, 0, 1)),
    ("presence_penalty", Bound(False, -2, 2)),
    ("frequency_penalty", Bound(False, -2, 2)),
    ("top_logprobs", Bound(True, 0, 20)),
    ("top_k", Bound(True, -1, INT32_MAX)),  # extensions: -1 or 0 turn top-k off
    ("n_predict", Bound(True, -1, INT32_MAX)),  # llama.cpp: -1 is no limit
    ("n_probs", Bound(True, 0, INT32_MAX)),
    ("repeat_last_n", Bound(True, -1, INT32_MAX)),
    ("min_p", Bound(False, 0, 1)),
    ("typical_p", Bound(False, 0, 1)),
    ("repeat_penalty", Bound(False, 0, None)),
)
_COMPLETION_NUMBERS: tuple[tuple[str, Bound], ...] = (
    ("logprobs", Bound(True, 0, 20)),
    ("best_of", Bound(True, 1, 20)),
)
_EMBEDDING_NUMBERS: tuple[tuple[str, Bound], ...] = (("dimensions", Bound(True, 1, INT32_MAX)),)
_COMMON_BOUNDS = dict(_COMMON_NUMBERS)


def _check_numbers(
    body: Mapping[str, Any], fields: tuple[tuple[str, Bound], ...], bounds: Mapping[str, Bound] | None = None
) -> None:
    """Every present (non-null) field of ``fields`` within its range, else a 400 with ``param`` set and
    OpenAI's own wording and codes (``invalid_type``, ``integer_above_max_value`` …). With ``bounds``
    (``fields`` as a dict) and a body of fewer fields than ``fields`` (a chat request has a handful, against
    16 numeric fields), the body's own fields are looked up in it first, and a body with nothing wrong is
    done; the first wrong field in ``fields``' order is the one reported."""
    if bounds is not None and len(body) < len(fields):
        for key, value in body.items():
            bound = bounds.get(key)
            if bound is not None and value is not None and problem(value, bound) is not None:
                break
        else:
            return
    for key, bound in fields:
        value = body.get(key)
        if value is None:
            continue
        wrong = problem(value, bound)
        if wrong is None:
            continue
        if wrong.code == "invalid_type":
            message = f"Invalid type for '{key}': expected {wrong.expected}, but got {wrong.got} instead."
        else:
            kind = wrong.code.split("_", 1)[0]
            side = "below minimum" if "below" in wrong.code else "above maximum"
            message = (
                f"Invalid '{key}': {kind} {side} value. Expected {wrong.expected}, but got {wrong.got} "
                "instead."
            )
        err = _bad(message, key)
        err.code = wrong.code
        raise err


def _common(body: Mapping[str, Any]) -> None:
    model = body.get("model")
    if model is None:
        raise _bad("you must provide a model parameter", "model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("'model' must be a non-empty string", "model")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad(f"{stream!r} is not of type 'boolean' - 'stream'", "stream")
    _check_numbers(body, _COMMON_NUMBERS, _COMMON_BOUNDS)
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise _bad("'stop' must be a string or an array of strings", "stop")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("'stream_options' must be an object", "stream_options")


def check_chat(body: Mapping[str, Any]) -> None:
    _common(body)
    messages = body.get("messages")
    if messages is None:
        raise _bad("you must provide a messages parameter", "messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"'messages.{i}' must be an object", f"messages.[{i}]")
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool", "function"):
            raise _bad(f"invalid role {role!r} in 'messages.{i}'", f"messages.[{i}].role")
        calls = message.get("tool_calls")
        if calls is not None:
            _check_tool_calls(i, calls)
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        err = _bad(
            f"Invalid type for 'logprobs': expected a boolean, but got {kind_of(logprobs)} instead.",
            "logprobs",
        )
        err.code = "invalid_type"
        raise err
    tools = body.get("tools")
    if tools is not None:
        _check_tools(tools)
    response_format = body.get("response_format")
    if response_format is not None and not (isinstance(response_format, dict) and "type" in response_format):
        raise _bad("'response_format' must be an object with a 'type'", "response_format")


def _check_tool_calls(i: int, calls: Any) -> None:
    """An assistant message's ``tool_calls``: ``[{"type": "function", "function": {"name", "arguments"}}]``
    (a backend answers anything else with a 500 of its own)."""
    where = f"messages.[{i}].tool_calls"
    if not isinstance(calls, list):
        raise _bad(f"'{where}' must be an array", where)
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(fn, dict)
            or call.get("type") != "function"
            or not isinstance(fn.get("name"), str)
            or not isinstance(fn.get("arguments"), str)
        ):
            raise _bad(
                f"'{where}.[{j}]' must be {{'type': 'function', 'function': {{'name': …, 'arguments': …}}}}",
                f"{where}.[{j}]",
            )


def _check_tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise _bad("'tools' must be an array", "tools")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _bad(f"'tools.{i}.type' must be 'function'", f"tools.[{i}].type")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad(f"'tools.{i}.function' must be an object with a 'name'", f"tools.[{i}].function")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            param = f"tools.[{i}].function.parameters"
            raise _bad(f"'tools.{i}.function.parameters' must be an object", param)


def check_completion(body: Mapping[str, Any]) -> None:
    _common(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise _bad("you must provide a prompt parameter", "prompt")
    if not isinstance(prompt, str | list):
        raise _bad("'prompt' must be a string, an array of strings or of tokens", "prompt")
    _check_numbers(body, _COMPLETION_NUMBERS)


def check_embeddings(body: Mapping[str, Any]) -> None:
    _common(body)
    data = body.get("input")
    if data is None:
        raise _bad("you must provide an input parameter", "input")
    if not _valid_embedding_input(data):
        raise _bad(
            "'input' must be a string, an array of strings, an array of tokens or an array of token arrays",
            "input",
        )
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in _ENCODINGS:
        raise _bad(f"{encoding!r} is not one of ['float', 'base64'] - 'encoding_format'", "encoding_format")
    _check_numbers(body, _EMBEDDING_NUMBERS)


def _valid_embedding_input(data: Any) -> bool:
    if isinstance(data, str):
        return bool(data)
    if not isinstance(data, list) or not data:
        return False
    if all(isinstance(x, str) for x in data):
        return True
    if all(isinstance(x, int) and not isinstance(x, bool) for x in data):
        return True
    return all(
        isinstance(row, list) and row and all(isinstance(x, int) and not isinstance(x, bool) for x in row)
        for row in data
    )


def error_body(exc: SuperOllamaError) -> dict[str, Any]:
    """OpenAI's error envelope for one of our errors."""
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def model_object(name: str, created: int, owned_by: str = "superollama") -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


def model_list(models: Iterable[tuple[str, int, str]]) -> dict[str, Any]:
    """``(id, created, owned_by)`` triples as OpenAI's model list."""
    return {"object": "list", "data": [model_object(*m) for m in models]}


USAGE_KEY = b'"usage"'
USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')  # JSON allows blanks around the colon


def find_usage(data: bytes) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` of the last ``"usage": {...}`` object in a response body or
    SSE text, without decoding the rest (an embeddings answer can be megabytes of numbers)."""
    at = data.rfind(USAGE_KEY)
    while at != -1:
        found = USAGE_OBJECT.match(data, at)
        usage = _object_at(data, found.end() - 1) if found is not None else None
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
            if isinstance(prompt, int) and isinstance(completion, int):
                return prompt, completion
        at = data.rfind(USAGE_KEY, 0, at)
    return None


# An object whose braces nest at most two deep (a usage object and its ``*_details``), matched in one call;
# possessive, so it never backtracks (linear in what it reads, whatever follows)
_SHALLOW_OBJECT = re.compile(rb"\{(?:[^{}]++|\{[^{}]*+\})*+\}")


def _object_at(data: bytes, start: int) -> Any:
    """The JSON value of the object opening at ``start``, or None. Usage objects hold only keys, numbers
    and objects of those, so the braces are matched first, at C speed: one regular expression for the
    usual two levels (a third of the time of a ``find`` per brace), else brace to brace. If that slice
    does not parse (a brace inside a string), the careful scan decides."""
    shallow = _SHALLOW_OBJECT.match(data, start)
    if shallow is not None:
        i = shallow.end()
    else:
        depth, i = 0, start
        while True:
            opening, closing = data.find(b"{", i), data.find(b"}", i)
            if closing == -1:
                return None
            if opening != -1 and opening < closing:
                depth, i = depth + 1, opening + 1
                continue
            depth, i = depth - 1, closing + 1
            if depth == 0:
                break
    try:
        return orjson.loads(data[start:i])
    except orjson.JSONDecodeError:
        end = _object_end(data, start)
    if end == -1:
        return None
    try:
        return orjson.loads(data[start:end])
    except orjson.JSONDecodeError:
        return None


def _object_end(data: bytes, start: int) -> int:
    """Index just past the JSON object opening at ``start`` (strings respected), or -1 if cut short."""
    depth, i, n = 0, start, len(data)
    while i < n:
        c = data[i]
        if c == 0x22:  # a string: skip to its closing quote
            i += 1
            while i < n and data[i] != 0x22:
                i += 2 if data[i] == 0x5C else 1
        elif c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1
