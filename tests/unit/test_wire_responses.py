"""Golden tests of the Responses API ⇄ OpenAI chat converters and of its stream of semantic events."""

from __future__ import annotations

from typing import Any

import pytest

from superollama.errors import InvalidRequest
from superollama.wire import responses as wire
from superollama.wire.responses_stream import ResponseStream, sse

TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


def _req(**fields: Any) -> wire.ResponsesRequest:
    return wire.parse(wire.ResponsesRequest, {"model": "m", "input": "Hi", **fields})


def test_request_golden() -> None:
    req = _req(
        instructions="Be brief.",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Look"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AA"},
                ],
            },
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city":"Paris"}',
            },
            {
                "type": "function_call",
                "call_id": "call_2",
                "name": "get_weather",
                "arguments": '{"city":"Rome"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "message", "role": "developer", "content": "Use metric."},
        ],
        tools=[TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=20,
        temperature=0.2,
        text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}},
    )
    history = [{"role": "user", "content": "Earlier"}, {"role": "assistant", "content": "Yes"}]
    assert wire.chat_request(req, "served", history) == {
        "model": "served",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Earlier"},
            {"role": "assistant", "content": "Yes"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "developer", "content": "Use metric."},
        ],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 20,
        "temperature": 0.2,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
        },
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input": [{"type": "bogus"}]}, "input.0"),
        ({"tools": [{"type": "web_search"}]}, "tools.0: Input tag 'web_search'"),
        (
            {"tools": [{"type": "file_search", "vector_store_ids": []}]},
            "tools.0.file_search.vector_store_ids",
        ),
        ({"tools": [{"type": "file_search"}]}, "tools.0.file_search.vector_store_ids: Field required"),
        (
            {"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"], "max_num_results": 51}]},
            "tools.0.file_search.max_num_results",
        ),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"store": "yes"}, "store: Input should be a valid boolean"),
    ],
)
def test_bad_requests_name_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        _req(**fields)
    assert err.value.message.startswith(message)


def test_answer_and_conversation_golden() -> None:
    req = _req(instructions="Be brief.", max_output_tokens=5)
    resp = {
        "choices": [
            {
                "finish_reason": "length",
                "message": {
                    "content": "Hello",
                    "tool_calls": [{"id": "call_7", "function": {"name": "f", "arguments": "{}"}}],
                },
            }
        ]
    }
    output = wire.output_items(resp)
    assert [(o["type"], o["status"]) for o in output] == [
        ("message", "completed"),
        ("function_call", "completed"),
    ]
    assert output[0]["content"] == [
        {"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}
    ]
    assert output[1] | {"id": "x"} == {
        "type": "function_call",
        "id": "x",
        "call_id": "call_7",
        "name": "f",
        "arguments": "{}",
        "status": "completed",
    }
    obj = wire.response_object(req, "resp_1", 100, output=output, counts=(3, 5), finish="length")
    assert obj["status"] == "incomplete" and obj["incomplete_details"] == {"reason": "max_output_tokens"}
    assert (
        obj["usage"]["total_tokens"] == 8
        and obj["tool_choice"] == "auto"
        and obj["text"] == {"format": {"type": "text"}}
    )
    messages = wire.chat_request(req, "s", [])["messages"]
    assert wire.conversation(req, messages, output) == [
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": "Hello",
            "tool_calls": [
                {"id": "call_7", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
    ]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_stream_events_in_order_with_sequence_numbers() -> None:
    s = ResponseStream(_req(), "resp_1", 100)
    events = s.start()
    for chunk in (
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hel"}),
        _chunk({"content": "lo"}),
        _chunk(
            {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": '{"a"'}}]}
        ),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
        _chunk({}, "tool_calls"),
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 6}},
    ):
        events += s.feed(chunk)
    events += s.end()
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert events[2]["item"]["content"] == [] and events[2]["output_index"] == 0
    assert events[6]["text"] == "Hello" and events[12]["arguments"] == '{"a":1}'
    assert events[9]["output_index"] == 1 and events[9]["item"]["arguments"] == ""
    final = events[-1]["response"]
    assert final["usage"]["input_tokens"] == 4 and [o["type"] for o in final["output"]] == [
        "message",
        "function_call",
    ]
    assert sse({"type": "x", "sequence_number": 0}) == b'event: x\ndata: {"type":"x","sequence_number":0}\n\n'


FS_TOOL = {"type": "file_search", "vector_store_ids": ["vs_1"], "ranking_options": {"score_threshold": 0.2}}
FOUND = [
    wire.Found("file-a", "a.md", 0.9, "alpha", {"k": 1}),
    wire.Found("file-b", "b.md", 0.8, "beta", {}),
    wire.Found("file-a", "a.md", 0.7, "alpha 2", {"k": 1}),
]


def test_file_search_is_no_chat_tool_and_cites_each_file_once() -> None:
    req = _req(tools=[FS_TOOL], tool_choice="auto", include=["file_search_call.results"])
    assert req.file_search is not None and req.file_search.vector_store_ids == ["vs_1"]
    assert (
        req.file_search.ranking_options is not None and req.file_search.ranking_options.score_threshold == 0.2
    )
    chat = wire.chat_request(req, "m", [])
    assert "tools" not in chat and "tool_choice" not in chat  # nothing for the chat model to call
    both = wire.chat_request(_req(tools=[FS_TOOL, TOOL], tool_choice="required"), "m", [])
    assert [t["function"]["name"] for t in both["tools"]] == ["get_weather"] and both[
        "tool_choice"
    ] == "required"
    with pytest.raises(InvalidRequest, match="only one file_search"):
        _ = _req(tools=[FS_TOOL, FS_TOOL]).file_search
    chosen = _req(tools=[FS_TOOL], tool_choice={"type": "file_search"})
    assert chosen.file_search is not None and "tool_choice" not in wire.chat_request(chosen, "m", [])
    assert wire.response_object(chosen, "resp_1", 1)["tool_choice"] == {"type": "file_search"}
    with pytest.raises(InvalidRequest, match="tool_choice names file_search"):
        _ = _req(tools=[TOOL], tool_choice={"type": "file_search"}).file_search
    assert wire.citations(FOUND) == [
        {"type": "file_citation", "index": 0, "file_id": "file-a", "filename": "a.md"},
        {"type": "file_citation", "index": 1, "file_id": "file-b", "filename": "b.md"},
    ]
    item = wire.file_search_item("fs_1", ["q"], FOUND[:1])
    assert item == {
        "type": "file_search_call",
        "id": "fs_1",
        "status": "completed",
        "queries": ["q"],
        "results": [
            {"file_id": "file-a", "filename": "a.md", "score": 0.9, "text": "alpha", "attributes": {"k": 1}}
        ],
    }
    assert wire.file_search_item("fs_1", ["q"], None)["results"] is None
    answer = {"choices": [{"message": {"role": "assistant", "content": "A."}}]}
    message = wire.output_items(answer, wire.citations(FOUND))[0]
    assert [a["file_id"] for a in message["content"][0]["annotations"]] == ["file-a", "file-b"]
    assert wire.last_user_text([{"role": "user", "content": [{"type": "text", "text": "Q?"}]}]) == "Q?"


def test_stream_events_of_a_file_search_come_before_the_cited_message() -> None:
    s = ResponseStream(_req(tools=[FS_TOOL]), "resp_1", 100)
    s.annotations = wire.citations(FOUND)
    events = s.start() + s.file_search("fs_1", ["q"], None)
    events += s.feed(_chunk({"content": "Yes"})) + s.end()
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.file_search_call.in_progress",
        "response.file_search_call.searching",
        "response.file_search_call.completed",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.annotation.added",
        "response.output_text.annotation.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[2]["item"]["status"] == "in_progress" and events[2]["output_index"] == 0
    assert all(e["item_id"] == "fs_1" and e["output_index"] == 0 for e in events[3:6])
    assert events[6]["item"] == wire.file_search_item("fs_1", ["q"], None)
    assert events[7]["output_index"] == 1
    assert [e["annotation_index"] for e in events[10:12]] == [0, 1]
    assert (
        events[10]["annotation"]["file_id"] == "file-a" and events[10]["item_id"] == events[7]["item"]["id"]
    )
    assert events[13]["part"]["annotations"] == wire.citations(FOUND)
    final = events[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["file_search_call", "message"]
    assert final["output"][1]["content"][0]["annotations"] == wire.citations(FOUND)
    assert final["tools"][0]["type"] == "file_search" and final["tools"][0]["vector_store_ids"] == ["vs_1"]
