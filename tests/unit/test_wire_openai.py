"""OpenAI request checks: each bad field is a 400 naming the field; good requests pass untouched."""

from __future__ import annotations

from typing import Any

import pytest

from superollama.errors import InvalidRequest
from superollama.wire import openai as wire

MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MSG}, "model"),
        ({"model": "", "messages": MSG}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": [1]}, "messages.[0]"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages.[0].role"),
        ({"model": "m", "messages": MSG, "stream": 1}, "stream"),
        ({"model": "m", "messages": MSG, "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": MSG, "max_completion_tokens": True}, "max_completion_tokens"),
        ({"model": "m", "messages": MSG, "n": 0}, "n"),
        ({"model": "m", "messages": MSG, "temperature": "hot"}, "temperature"),
        ({"model": "m", "messages": MSG, "seed": 1.5}, "seed"),
        ({"model": "m", "messages": MSG, "stop": [1]}, "stop"),
        ({"model": "m", "messages": MSG, "tools": {}}, "tools"),
        ({"model": "m", "messages": MSG, "tools": [{"type": "function"}]}, "tools.[0].function"),
        ({"model": "m", "messages": MSG, "tools": [{"type": "web"}]}, "tools.[0].type"),
        ({"model": "m", "messages": MSG, "response_format": "json"}, "response_format"),
        ({"model": "m", "messages": MSG, "stream_options": True}, "stream_options"),
        # found by schemathesis: llama.cpp answered these with a 500 (relayed as a 502)
        ({"model": "m", "messages": [{"role": "assistant", "tool_calls": {}}]}, "messages.[0].tool_calls"),
        (
            {"model": "m", "messages": [{"role": "assistant", "tool_calls": [[None, None]]}]},
            "messages.[0].tool_calls.[0]",
        ),
        (
            {"model": "m", "messages": [*MSG, {"role": "assistant", "tool_calls": [{"type": "function"}]}]},
            "messages.[1].tool_calls.[0]",
        ),
    ],
)
def test_chat_rejects(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        wire.check_chat(body)
    assert info.value.param == param
    assert info.value.status == 400


def test_chat_accepts_a_full_request() -> None:
    wire.check_chat(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "s"},
                *MSG,
                {
                    "role": "assistant",
                    "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "tool", "tool_call_id": "c", "content": "1"},
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 5,
            "n": 2,
            "temperature": 0,
            "top_p": 0.9,
            "seed": 3,
            "stop": ["\n"],
            "tools": [],
            "response_format": {"type": "json_object"},
        }
    )


@pytest.mark.parametrize(
    "data",
    ["text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]],
)
def test_embeddings_inputs(data: object) -> None:
    wire.check_embeddings({"model": "m", "input": data, "encoding_format": "base64"})


@pytest.mark.parametrize("data", ["", [], [1, "a"], [[1], []], [True], {"a": 1}, None])
def test_embeddings_bad_inputs(data: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        wire.check_embeddings({"model": "m", "input": data})
    assert info.value.param == "input"


def test_completion_needs_prompt() -> None:
    with pytest.raises(InvalidRequest) as info:
        wire.check_completion({"model": "m"})
    assert info.value.param == "prompt"
    wire.check_completion({"model": "m", "prompt": "once"})


def test_error_body_shape() -> None:
    err = InvalidRequest("bad", param="model")
    assert wire.error_body(err) == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "model", "code": None}
    }


@pytest.mark.parametrize(
    ("check", "extra", "field", "value", "code"),
    [
        (wire.check_chat, {"messages": MSG}, "max_tokens", 4294967297, "integer_above_max_value"),
        (wire.check_chat, {"messages": MSG}, "max_tokens", 10**12, "integer_above_max_value"),
        (wire.check_chat, {"messages": MSG}, "max_tokens", -1, "integer_below_min_value"),
        (wire.check_chat, {"messages": MSG}, "max_tokens", True, "invalid_type"),
        (wire.check_chat, {"messages": MSG}, "max_tokens", 1.5, "invalid_type"),
        (wire.check_chat, {"messages": MSG}, "max_completion_tokens", 2**31, "integer_above_max_value"),
        (wire.check_chat, {"messages": MSG}, "seed", 2**63, "integer_above_max_value"),
        (wire.check_chat, {"messages": MSG}, "seed", False, "invalid_type"),
        (wire.check_chat, {"messages": MSG}, "temperature", 2.5, "decimal_above_max_value"),
        (wire.check_chat, {"messages": MSG}, "top_p", -0.5, "decimal_below_min_value"),
        (wire.check_chat, {"messages": MSG}, "presence_penalty", 3, "integer_above_max_value"),
        (wire.check_chat, {"messages": MSG}, "top_logprobs", 21, "integer_above_max_value"),
        (wire.check_chat, {"messages": MSG}, "logprobs", 1, "invalid_type"),
        (wire.check_chat, {"messages": MSG}, "top_k", 2**31, "integer_above_max_value"),
        (wire.check_chat, {"messages": MSG}, "n_predict", 4294967297, "integer_above_max_value"),
        (wire.check_completion, {"prompt": "x"}, "max_tokens", 4294967297, "integer_above_max_value"),
        (wire.check_completion, {"prompt": "x"}, "logprobs", 21, "integer_above_max_value"),
        (wire.check_embeddings, {"input": "x"}, "dimensions", 0, "integer_below_min_value"),
        (wire.check_embeddings, {"input": "x"}, "dimensions", 2**31, "integer_above_max_value"),
    ],
)
def test_numbers_out_of_range_name_the_field_and_say_why(
    check: Any, extra: dict[str, Any], field: str, value: Any, code: str
) -> None:
    """llama.cpp reads these into an int32: a larger value would wrap round (4294967297 → 1)."""
    with pytest.raises(InvalidRequest) as info:
        check({"model": "m", **extra, field: value})
    assert (info.value.param, info.value.code, info.value.status) == (field, code, 400)
    assert repr(value) in info.value.message or code == "invalid_type"


def test_numbers_at_their_limits_pass() -> None:
    wire.check_chat(
        {
            "model": "m",
            "messages": MSG,
            "max_tokens": 2**31 - 1,
            "seed": -(2**63),
            "temperature": 2,
            "top_p": 0,
            "frequency_penalty": -2,
            "top_logprobs": 20,
            "logprobs": True,
            "top_k": -1,
            "n_predict": -1,
        }
    )


@pytest.mark.parametrize(
    ("data", "usage"),
    [
        (b'{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}', (3, 4)),
        # JSON allows blanks around the colon: a backend that pretty-prints is metered too
        (b'{"usage" : {"prompt_tokens": 3, "completion_tokens": 4}}', (3, 4)),
        (b'{\n  "usage":\n    {\n      "prompt_tokens": 5,\n      "completion_tokens": 6\n    }\n}', (5, 6)),
        (b'{"usage"\t:\t{"prompt_tokens":1}}', (1, 0)),  # an embeddings answer: no completion tokens
        # the last usage object wins; a null after it and the word inside a string do not count
        (b'data: {"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\ndata: {"usage":null}\n\n', (1, 1)),
        (b'{"text":"\\"usage\\": {","usage":{"prompt_tokens":2,"completion_tokens":9}}', (2, 9)),
        (b'{"usage":{"prompt_tokens":"3","completion_tokens":4}}', None),  # not integers: no usage
        (b'{"usage":null}', None),
        (b'{"usage" : {"prompt_tokens": 3', None),  # cut short
        (b"", None),
        # details objects (two levels of braces, matched at once), and three levels (brace by brace)
        (
            b'{"usage":{"prompt_tokens":12,"completion_tokens":20,"prompt_tokens_details":{"cached_tokens":0},'
            b'"completion_tokens_details":{"reasoning_tokens":0}},"x":1}',
            (12, 20),
        ),
        (b'{"usage":{"prompt_tokens":7,"completion_tokens":8,"d":{"e":{"f":1}},"g":{}}}', (7, 8)),
        (b'{"usage":{"prompt_tokens":7,"completion_tokens":8,"d":{"e":{"f":1}}', None),  # cut short, deep
        # a brace inside a string of the usage object: the careful scan decides
        (b'{"usage":{"note":"a } and a {","prompt_tokens":5,"completion_tokens":1,"d":{}}}', (5, 1)),
        (b'{"usage":{"prompt_tokens":5,"completion_tokens":1,"d":{"s":"}"}}}', (5, 1)),
    ],
)
def test_find_usage(data: bytes, usage: tuple[int, int] | None) -> None:
    assert wire.find_usage(data) == usage


def test_of_two_wrong_numbers_the_first_in_the_fields_order_is_reported() -> None:
    body = {"model": "m", "messages": MSG, "top_p": 5, "temperature": "hot", "max_tokens": 0}  # body order
    with pytest.raises(InvalidRequest) as err:
        wire.check_chat(body)
    assert err.value.param == "max_tokens"
    wide = {f"x{i}": i for i in range(20)} | body  # more fields than the numeric ones: the other way round
    with pytest.raises(InvalidRequest) as err:
        wire.check_chat(wide)
    assert err.value.param == "max_tokens"
