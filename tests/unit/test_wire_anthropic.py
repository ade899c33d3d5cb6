"""Golden tests of the Anthropic Messages ⇄ OpenAI chat converters: fixed inputs → exact outputs.

The OpenAI chunks are shaped as llama.cpp's server sends them (a role chunk, content deltas, a finish
chunk, a usage-only chunk) and as it streams a tool call (id and name first, then argument fragments).
"""

from __future__ import annotations

from typing import Any

import pytest

from superollama.errors import InvalidRequest, ModelNotFound, RateLimited, Unauthorized, UpstreamError
from superollama.wire import anthropic as wire
from superollama.wire.anthropic_stream import StopScanner, StreamTranslator

TOOL = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}


def _req(**fields: Any) -> wire.MessagesRequest:
    body = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}], **fields}
    return wire.parse(wire.MessagesRequest, body)


def test_request_golden() -> None:
    req = _req(
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "...", "signature": "s"},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "sunny"}],
                    },
                    {"type": "text", "text": "And"},
                    {"type": "text", "text": "tomorrow?"},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                    {"type": "text", "text": "What is this?"},
                ],
            },
        ],
        tools=[TOOL],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        temperature=0.5,
        top_k=40,
        metadata={"user_id": "u-1"},
        stream=True,
    )
    assert wire.chat_request(req, "served") == {
        "model": "served",
        "messages": [
            {"role": "system", "content": "Be brief.\n\nBe kind."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
            {"role": "user", "content": "And\n\ntomorrow?"},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                    {"type": "text", "text": "What is this?"},
                ],
            },
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather",
                    "parameters": {"type": "object"},
                },
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": 16,
        "temperature": 0.5,
        "top_k": 40,
        "user": "u-1",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert wire.has_images(req)


def test_stop_sequences_stay_with_the_gateway_and_tool_choice_maps() -> None:
    out = wire.chat_request(_req(stop_sequences=["\n\n"], tool_choice={"type": "tool", "name": "f"}), "s")
    assert "stop" not in out and out["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert wire.chat_request(_req(tool_choice={"type": "none"}), "s")["tool_choice"] == "none"
    err = wire.parse(
        wire.MessagesRequest, {"model": "m", "max_tokens": 1, "messages": [], "tool_choice": {"type": "tool"}}
    )
    with pytest.raises(InvalidRequest, match=r"tool_choice\.name"):
        wire.chat_request(err, "s")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m", "messages": []}, "max_tokens: Field required"),
        ({"model": "m", "max_tokens": "5", "messages": []}, "max_tokens: Input should be a valid integer"),
        (
            {"model": "m", "max_tokens": 0, "messages": []},
            "max_tokens: Input should be greater than or equal to 1",
        ),
        (
            {"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]},
            "messages.0.role",
        ),
        (
            {"model": "m", "max_tokens": 1, "messages": [], "temperature": 1.5},
            "temperature: Input should be less",
        ),
        ({"model": "", "max_tokens": 1, "messages": []}, "model: String should have at least 1 character"),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        wire.parse(wire.MessagesRequest, body)
    assert err.value.message.startswith(message) and err.value.status == 400


def test_answer_golden() -> None:
    resp = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {"id": "call_9", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7},
    }
    assert wire.message(resp, "m", msg_id="msg_1") == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_9", "name": "get_weather", "input": {"city": "Rome"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 7},
    }
    length = {"choices": [{"finish_reason": "length", "message": {"content": "abc"}}]}
    assert wire.message(length, "m")["stop_reason"] == "max_tokens"
    assert wire.tool_input("not json") == {"arguments": "not json"} and wire.tool_input("[1]") == {
        "value": [1]
    }


def test_errors_in_anthropic_shape() -> None:
    assert wire.error_body(InvalidRequest("bad"), "req_1") == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "bad"},
        "request_id": "req_1",
    }
    kinds = [
        wire.error_body(e)["error"]["type"] for e in (Unauthorized("k"), ModelNotFound("m"), RateLimited("r"))
    ]
    assert kinds == ["authentication_error", "not_found_error", "rate_limit_error"]
    assert wire.error_body(UpstreamError("u"))["error"]["type"] == "overloaded_error"
    assert wire.sse("ping", {"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_stream_golden_text_then_tool() -> None:
    t = StreamTranslator("m", "msg_1")
    events = t.start()
    for chunk in (
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hi"}),
        _chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": ""},
                    }
                ]
            }
        ),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        _chunk({}, "tool_calls"),
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}},
    ):
        events += t.feed(chunk)
    events += t.end()
    assert events == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "m",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "call_1", "name": "f", "input": {}},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"a":'},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "1}"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"input_tokens": 9, "output_tokens": 4},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    assert t.message()["content"] == [
        {"type": "text", "text": "Hi"},
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
    ]


def test_stop_scanner_holds_back_only_what_may_start_a_sequence() -> None:
    s = StopScanner(["END", "\n\n"])
    assert [s.feed(x) for x in ("ab", "cE", "N", "x\n", "yE", "ND tail")] == ["ab", "c", "", "ENx", "\ny", ""]
    assert s.matched == "END" and s.feed("more") == ""
    t = StopScanner(["stop"])
    assert t.feed("sto") == "" and t.flush() == "sto"

    tr = StreamTranslator("m", "msg_2", ["3"])
    tr.start()
    for piece in ("1, 2", ", 3", ", 4"):
        tr.feed(_chunk({"content": piece}))
    assert tr.stop == "3" and tr.text == "1, 2, "
    assert tr.end()[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "3"}
