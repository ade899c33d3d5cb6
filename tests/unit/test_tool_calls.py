"""Function calling without a model: parsing ``tools``/``tool_choice``, rendering tools and earlier calls
for a chat template, reading calls back out of text (plain and streamed), the forced call's schema, and
the chat response and stream shapes with tool calls and logprobs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from superollama.runtimes._json_guide import feed_bytes, start
from superollama.runtimes._logprobs import Piece, TokenLogprob
from superollama.runtimes._openai_shapes import Reply, RequestError, parse_chat
from superollama.runtimes._replies import ChatStream
from superollama.runtimes._tools import (
    ToolParams,
    ToolStream,
    call_node,
    extract_calls,
    parse_tools,
    render_history,
    with_preamble,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}
MSG = [{"role": "user", "content": "weather in Paris?"}]


def tools(**fields: Any) -> ToolParams:
    parsed = parse_tools({"tools": [WEATHER, TIME], **fields})
    assert parsed is not None
    return parsed


def test_tools_and_tool_choice_parse() -> None:
    assert parse_tools({}) is None
    assert parse_tools({"tools": [], "tool_choice": "none"}) is None
    auto = tools()
    assert (auto.choice, auto.forced, auto.parallel, auto.active, auto.guided) == (
        "auto",
        None,
        True,
        True,
        False,
    )
    assert [t.name for t in auto.tools] == ["get_weather", "get_time"]
    assert auto.tools[1].parameters == {"type": "object", "properties": {}}
    assert tools(tool_choice="required").guided
    assert not tools(tool_choice="none").active
    named = tools(
        tool_choice={"type": "function", "function": {"name": "get_time"}}, parallel_tool_calls=False
    )
    assert (named.choice, named.forced, named.parallel) == ("function", "get_time", False)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": {"a": 1}}, "tools"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools[0].function"),
        ({"tools": [TIME, TIME]}, "tools"),
        ({"tools": [TIME], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [TIME], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [TIME], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)
def test_bad_tools_are_400s_with_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_chat({"messages": MSG, **body})
    assert (info.value.status, info.value.param) == (400, param)


def test_a_forced_call_with_an_unsupported_schema_is_refused_and_auto_is_not() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "string", "pattern": "x"}}}
    with pytest.raises(RequestError) as info:
        parse_chat({"messages": MSG, "tools": [tool], "tool_choice": "required"})
    assert info.value.param == "tools[0].function.parameters" and "'pattern'" in info.value.message
    assert parse_chat({"messages": MSG, "tools": [tool]}).sampling.json is None  # auto: nothing to guarantee


def test_the_forced_call_schema_admits_valid_calls_only() -> None:
    node = call_node(tools(tool_choice="required"))

    def ok(text: str) -> bool:
        frame = feed_bytes(start(node), text.encode())
        return frame is not None and frame.closed

    assert ok('{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}')
    assert ok('{"arguments": {}, "name": "get_time"}')
    assert not ok('{"name": "get_weather", "arguments": {"unit": "c"}}')  # required city
    assert not ok('{"name": "get_weather", "arguments": {"city": "Paris", "unit": "k"}}')
    assert not ok('{"name": "set_weather", "arguments": {}}')
    assert not ok('{"name": "get_time"}')
    only_time = call_node(tools(tool_choice={"type": "function", "function": {"name": "get_time"}}))
    frame = feed_bytes(start(only_time), b'{"name": "get_w')
    assert frame is None
    assert (
        parse_chat({"messages": MSG, "tools": [WEATHER], "tool_choice": "required"}).sampling.json is not None
    )


def test_calls_are_read_from_tool_call_blocks() -> None:
    text = (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": "{}"}</tool_call>'
    )
    content, calls = extract_calls(text, tools())
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    assert all(c.id.startswith("call_") and len(c.id) > 10 for c in calls) and calls[0].id != calls[1].id
    assert calls[0].as_openai()["type"] == "function"
    _, first_only = extract_calls(text, tools(parallel_tool_calls=False))
    assert [c.name for c in first_only] == ["get_weather"]


@pytest.mark.parametrize(
    ("text", "names", "content"),
    [
        ('{"name": "get_time", "arguments": {}}', ["get_time"], None),
        ('```json\n{"name": "get_weather", "parameters": {"city": "Oslo"}}\n```', ["get_weather"], None),
        ('<tool_call>{"name": "get_time", "arguments": {}}', ["get_time"], None),  # never closed
        ('{"name": "launch_rockets", "arguments": {}}', [], '{"name": "launch_rockets", "arguments": {}}'),
        ('<tool_call>{"name": "get_time", "arguments": [1]}</tool_call>', [], None),
        ("<tool_call>not json</tool_call> sorry", [], None),
        ("The weather is fine.", [], "The weather is fine."),
    ],
)
def test_calls_in_other_forms_and_what_is_not_a_call(
    text: str, names: list[str], content: str | None
) -> None:
    got_content, calls = extract_calls(text, tools())
    assert [c.name for c in calls] == names
    if names:
        assert got_content == content
    else:
        assert got_content == text  # no call: the text is the answer, untouched


def test_a_forced_call_is_its_json_text() -> None:
    forced = tools(tool_choice="required")
    content, calls = extract_calls('{"name": "get_time", "arguments": {}}', forced)
    assert content is None and [c.name for c in calls] == ["get_time"]
    assert extract_calls('{"name": "get_time", "argu', forced) == ('{"name": "get_time", "argu', [])


def stream(params: ToolParams, pieces: list[str]) -> tuple[str, str, list[str]]:
    tracker, sent = ToolStream(params), []
    for piece in pieces:
        sent.append(tracker.feed(piece))
    tail, calls = tracker.finish()
    return "".join(sent), tail, [c.name for c in calls]


def test_streamed_content_stops_where_a_call_may_begin() -> None:
    params = tools()
    assert stream(params, ["Hello", " there", "."]) == ("Hello there.", "", [])
    sent, tail, names = stream(
        params, ["Sure. <tool", '_call>{"name": "get_time", ', '"arguments": {}}</tool_call>']
    )
    assert (sent, tail, names) == ("Sure. ", "", ["get_time"])
    assert stream(params, ["  ", '{"name": "get_time",', ' "arguments": {}}']) == ("", "", ["get_time"])
    assert stream(params, ["{not", " a call}"]) == ("", "{not a call}", [])
    assert stream(params, ["a <to", "y> b"]) == ("a <toy> b", "", [])
    assert stream(params, ["`", "x` is a name"]) == ("`x` is a name", "", [])
    fenced = ["``", '`json\n{"name": "get_time", "arguments": {}}\n```']
    assert stream(params, fenced) == ("", "", ["get_time"])
    assert stream(tools(tool_choice="required"), ['{"name": "get_time", "arguments": {}}']) == (
        "",
        "",
        ["get_time"],
    )


def test_history_renders_as_structured_fields_or_as_text() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'},
    }
    params = parse_chat(
        {
            "messages": [
                *MSG,
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
            ]
        }
    )
    structured = render_history(params.messages, structured=True)
    assert structured[1]["tool_calls"][0]["function"]["arguments"] == {"tz": "UTC"}
    assert structured[2] == {"role": "tool", "content": "12:00", "tool_call_id": "call_1"}
    text = render_history(params.messages, structured=False)
    assert text[1] == {
        "role": "assistant",
        "content": '<tool_call>{"name": "get_time", "arguments": {"tz": "UTC"}}</tool_call>',
    }
    assert text[2] == {"role": "user", "content": "<tool_response>\n12:00\n</tool_response>"}
    with pytest.raises(RequestError) as info:
        parse_chat({"messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]})
    assert info.value.param == "messages[0].tool_calls[0]"


def test_the_preamble_lists_the_tools_in_the_system_message() -> None:
    listed = with_preamble(MSG, tools().tools)
    assert listed[0]["role"] == "system" and listed[1:] == MSG
    assert '"name": "get_weather"' in listed[0]["content"] and "<tool_call>" in listed[0]["content"]
    merged = with_preamble([{"role": "system", "content": "Be brief."}, *MSG], tools().tools)
    assert merged[0]["content"].startswith("Be brief.\n\n") and len(merged) == 2


def test_chat_stream_sends_tool_calls_in_openai_streaming_shape() -> None:
    body = {"messages": MSG, "tools": [WEATHER], "logprobs": True, "stream": True}
    shaper = ChatStream(Reply("chatcmpl-1", 1, "m"), parse_chat(body))
    lp = TokenLogprob(b"x", -0.5)
    chunks = shaper.first()
    chunks += shaper.piece(Piece("<tool_call>", (lp,)))
    chunks += shaper.piece(Piece('{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>', (lp,)))
    chunks += shaper.end("stop", {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    head, arguments, last = deltas[1:]
    call = head["tool_calls"][0]
    assert (call["index"], call["type"], call["function"]) == (
        0,
        "function",
        {"name": "get_weather", "arguments": ""},
    )
    assert call["id"].startswith("call_")
    assert arguments == {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Rome"}'}}]}
    assert last == {} and chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert len(chunks[1]["choices"][0]["logprobs"]["content"]) == 2  # the held tokens' logprobs
