"""Golden tests of the Ollama ⇄ OpenAI converters: fixed inputs → exact outputs, byte for byte.

The SSE chunks below are what llama.cpp's server (xllamacpp) sends for SmolLM2, captured once and pinned.
"""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from superollama.core import VersionRecord
from superollama.errors import InvalidRequest
from superollama.wire import ollama as wire

T = "2026-01-02T03:04:05.000006Z"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 8).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 8).decode()
TIMINGS = {"prompt_n": 3, "prompt_ms": 12.5, "predicted_n": 2, "predicted_ms": 40.25}
USAGE = {"prompt_tokens": 31, "completion_tokens": 2, "total_tokens": 33}
TIMING = wire.Timing(total_ns=900_000_000, load_ns=700_000_000, prompt_ns=11, eval_ns=22)
STATS = {
    "total_duration": 900_000_000,
    "load_duration": 700_000_000,
    "prompt_eval_count": 31,
    "prompt_eval_duration": 12_500_000,
    "eval_count": 2,
    "eval_duration": 40_250_000,
}


# -- request fields -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        (0, 0.0),
        ("0", 0.0),
        (30, 30.0),
        (1.5, 1.5),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("300", 300.0),
        (-1, math.inf),
        ("-1m", math.inf),
    ],
)
def test_keep_alive(value: Any, seconds: float | None) -> None:
    assert wire.parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["5 minutes", "m", "5x", True, [1], "1h-3m"])
def test_bad_keep_alive_is_400(value: Any) -> None:
    with pytest.raises(InvalidRequest, match="keep_alive"):
        wire.parse_keep_alive(value)


def test_expires_at() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert wire.rfc3339(wire.expires_at(now, 90)) == "2026-01-01T00:01:30.000000Z"
    assert wire.expires_at(now, math.inf).year == 2317
    assert wire.expires_at(now, -5) == now


def test_options_map_to_openai_parameters() -> None:
    options = {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 5,
        "seed": 42,
        "num_predict": 16,
        "stop": "\n",
        "repeat_penalty": 1.1,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "num_ctx": 8192,  # fixed per instance: ignored
        "num_thread": 4,  # load-time option: ignored
        "mirostat": None,
    }
    assert wire.options_to_openai(options) == {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 5,
        "seed": 42,
        "max_tokens": 16,
        "stop": ["\n"],
        "repeat_penalty": 1.1,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
    }
    assert wire.options_to_openai({"num_predict": -1}) == {}
    assert wire.options_to_openai(None) == {}


@pytest.mark.parametrize(
    "options", [{"temperature": "hot"}, {"seed": 1.5}, {"top_k": True}, {"stop": [1]}, "x"]
)
def test_bad_options_are_400(options: Any) -> None:
    with pytest.raises(InvalidRequest):
        wire.options_to_openai(options)


def test_format_to_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert wire.response_format("json") == {"type": "json_object"}
    assert wire.response_format(schema) == {
        "type": "json_schema",
        "json_schema": {"name": "format", "schema": schema, "strict": True},
    }
    assert wire.response_format("") is None
    with pytest.raises(InvalidRequest, match="format"):
        wire.response_format("yaml")


@pytest.mark.parametrize(
    ("body", "message"),
    [({}, "model is required"), ({"model": ""}, "model is required"), ({"model": 3}, "non-empty")],
)
def test_model_is_required(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        wire.model_name(body)


def test_stream_defaults_to_true() -> None:
    assert wire.is_stream({}) is True
    assert wire.is_stream({"stream": None}) is True
    assert wire.is_stream({"stream": False}) is False
    with pytest.raises(InvalidRequest):
        wire.is_stream({"stream": "no"})


# -- images: vision pass-through ------------------------------------------------------------------------
def test_images_become_image_url_parts_and_back() -> None:
    """No vision model exists here (no GGUF with an mmproj), so vision is checked at the wire level:
    Ollama's base64 ``images`` → OpenAI ``image_url`` data-URL parts (MIME sniffed), and back."""
    body = {"model": "m", "messages": [{"role": "user", "content": "What is it?", "images": [PNG, JPEG]}]}
    content = wire.chat_request(body, "served")["messages"][0]["content"]
    assert content == [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
    ]
    assert wire.content_to_ollama(content) == ("What is it?", [PNG, JPEG])
    remote = [{"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]
    assert wire.content_to_ollama(remote) == ("", [])  # a URL is not base64: left out
    assert wire.content_to_ollama("plain") == ("plain", [])


def test_generate_images_go_through_chat() -> None:
    body = {"model": "m", "prompt": "Describe", "system": "Be brief", "images": [PNG], "stream": False}
    assert wire.generate_chat_request(body, "served") == {
        "model": "served",
        "messages": [
            {"role": "system", "content": "Be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            },
        ],
        "stream": False,
    }


@pytest.mark.parametrize("images", [["not base64!"], [3], "abc"])
def test_bad_images_are_400(images: Any) -> None:
    with pytest.raises(InvalidRequest, match="image"):
        wire.chat_request({"messages": [{"role": "user", "content": "x", "images": images}]}, "s")


# -- chat and generate requests -------------------------------------------------------------------------
def test_chat_request_golden() -> None:
    body = {
        "model": "smollm2",
        "messages": [
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}],
            },
            {"role": "tool", "content": "sunny", "tool_name": "weather"},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        "format": "json",
        "options": {"temperature": 0, "num_predict": 8},
        "think": True,
        "keep_alive": "5m",
    }
    assert wire.chat_request(body, "smollm2:135m") == {
        "model": "smollm2:135m",
        "messages": [
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_weather",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "content": "sunny", "tool_call_id": "call_weather"},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "max_tokens": 8,
        "response_format": {"type": "json_object"},
    }


@pytest.mark.parametrize(
    "messages",
    ["hi", [1], [{"role": "robot", "content": "x"}], [{"role": "user", "content": ["x"]}]],
)
def test_bad_messages_are_400(messages: Any) -> None:
    with pytest.raises(InvalidRequest):
        wire.chat_request({"model": "m", "messages": messages}, "s")


def test_completion_request_golden() -> None:
    body = {"model": "m", "prompt": "x", "suffix": "end", "options": {"seed": 1}, "stream": False}
    assert wire.completion_request("<rendered>", body, "served") == {
        "model": "served",
        "prompt": "<rendered>",
        "suffix": "end",
        "stream": False,
        "seed": 1,
    }


def test_completion_format_also_goes_as_llamacpp_json_schema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert wire.completion_request("p", {"format": schema, "stream": False}, "s") == {
        "model": "s",
        "prompt": "p",
        "stream": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "format", "schema": schema, "strict": True},
        },
        "json_schema": schema,
    }
    assert wire.completion_request("p", {"format": "json"}, "s")["json_schema"] == {"type": "object"}


def test_generate_flags() -> None:
    assert wire.generate_flags({}) == (False, None)
    assert wire.generate_flags({"raw": True, "context": [1, 2]}) == (True, [1, 2])
    for bad in ({"raw": "yes"}, {"context": [1, "a"]}, {"context": "1,2"}, {"raw": True, "images": [PNG]}):
        with pytest.raises(InvalidRequest):
            wire.generate_flags(bad)


@pytest.mark.parametrize(
    ("template", "system", "expected"),
    [
        ("{{ .System }}\nUser: {{ .Prompt }}\nBot:", "S", "S\nUser: P\nBot:"),
        ("{{ if .System }}<s>{{ .System }}</s>{{ end }}[{{ .Prompt }}]", "", "[P]"),
        ("{{ if .System }}<s>{{ .System }}</s>{{ else }}none {{ end }}[{{ .Prompt }}]", "S", "<s>S</s>[P]"),
        ("{{ if .System }}x{{ else }}none {{ end }}[{{ .Prompt }}]", "", "none [P]"),
        ("A  \n {{- .Prompt -}} \n  B{{ .Response }}", "", "APB"),
    ],
)
def test_render_template(template: str, system: str, expected: str) -> None:
    assert wire.render_template(template, system=system, prompt="P") == expected


@pytest.mark.parametrize("template", ["{{ range .Messages }}x{{ end }}", "{{ .Tools }}", "{{ if .System }}x"])
def test_unsupported_template_is_400(template: str) -> None:
    with pytest.raises(InvalidRequest, match="template"):
        wire.render_template(template, system="", prompt="P")


# -- responses ------------------------------------------------------------------------------------------
def test_stats_prefer_backend_timings_then_measure() -> None:
    assert wire.stats(TIMINGS, USAGE, TIMING) == STATS
    assert wire.stats(None, None, TIMING) == {
        "total_duration": 900_000_000,
        "load_duration": 700_000_000,
        "prompt_eval_count": 0,
        "prompt_eval_duration": 11,
        "eval_count": 0,
        "eval_duration": 22,
    }
    assert wire.stats(TIMINGS, None, TIMING)["prompt_eval_count"] == 3


def test_chat_response_golden() -> None:
    resp = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "ok",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                    ],
                },
            }
        ],
        "usage": USAGE,
        "timings": TIMINGS,
    }
    assert wire.chat_response(resp, "smollm2", T, TIMING) == {
        "model": "smollm2",
        "created_at": T,
        "message": {
            "role": "assistant",
            "content": "ok",
            "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
        },
        "done": True,
        "done_reason": "stop",
        **STATS,
    }


def test_generate_response_golden() -> None:
    resp = {"choices": [{"text": "Hello", "finish_reason": "length"}], "usage": USAGE, "timings": TIMINGS}
    assert wire.generate_response(resp, "m", T, TIMING, [1, 2, 3]) == {
        "model": "m",
        "created_at": T,
        "response": "Hello",
        "done": True,
        "done_reason": "length",
        **STATS,
        "context": [1, 2, 3],
    }
    assert wire.response_text(resp) == "Hello"


def test_load_and_unload_objects() -> None:
    assert wire.done_object("m", T, "load", chat=False) == {
        "model": "m",
        "created_at": T,
        "response": "",
        "done": True,
        "done_reason": "load",
    }
    assert wire.done_object("m", T, "unload", chat=True) == {
        "model": "m",
        "created_at": T,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "unload",
    }


CHAT_CHUNKS: list[dict[str, Any]] = [
    {"choices": [{"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}]},
    {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": "Hello"}}]},
    {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": "!"}}]},
    {"choices": [{"finish_reason": "length", "index": 0, "delta": {}}]},
    {"choices": [], "usage": USAGE, "timings": TIMINGS},
]


def test_chat_stream_golden() -> None:
    tr = wire.StreamTranslator("smollm2", chat=True)
    out = [obj for chunk in CHAT_CHUNKS for obj in tr.feed(chunk, T)]
    assert out == [
        {
            "model": "smollm2",
            "created_at": T,
            "message": {"role": "assistant", "content": "Hello"},
            "done": False,
        },
        {
            "model": "smollm2",
            "created_at": T,
            "message": {"role": "assistant", "content": "!"},
            "done": False,
        },
    ]
    assert tr.text == "Hello!"
    assert tr.final(T, TIMING) == {
        "model": "smollm2",
        "created_at": T,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "length",
        **STATS,
    }


def test_generate_stream_golden() -> None:
    chunks: list[dict[str, Any]] = [
        {"choices": [{"text": "-", "index": 0, "logprobs": None, "finish_reason": None}]},
        {"choices": [{"text": "by", "index": 0, "logprobs": None, "finish_reason": None}]},
        {
            "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"completion_tokens": 2, "prompt_tokens": 1, "total_tokens": 3},
            "timings": {"prompt_n": 1, "prompt_ms": 39.947, "predicted_n": 2, "predicted_ms": 151.916},
        },
    ]
    tr = wire.StreamTranslator("m", chat=False)
    out = [obj for chunk in chunks for obj in tr.feed(chunk, T)]
    assert out == [
        {"model": "m", "created_at": T, "response": "-", "done": False},
        {"model": "m", "created_at": T, "response": "by", "done": False},
    ]
    assert tr.final(T, wire.Timing(5, 1), [7, 8]) == {
        "model": "m",
        "created_at": T,
        "response": "",
        "done": True,
        "done_reason": "stop",
        "total_duration": 5,
        "load_duration": 1,
        "prompt_eval_count": 1,
        "prompt_eval_duration": 39_947_000,
        "eval_count": 2,
        "eval_duration": 151_916_000,
        "context": [7, 8],
    }


def test_stream_tool_calls_arrive_whole_and_thinking_passes() -> None:
    def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": d, "finish_reason": finish}]}

    chunks = [
        delta({"reasoning_content": "hmm"}),
        delta({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "get", "arguments": '{"ci'}}]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]}),
        delta({}, "tool_calls"),
    ]
    tr = wire.StreamTranslator("m", chat=True)
    out = [obj for chunk in chunks for obj in tr.feed(chunk, T)]
    msg = {"role": "assistant", "content": "", "thinking": "hmm"}
    calls = [{"function": {"name": "get", "arguments": {"city": "Oslo"}}}]
    assert out == [
        {"model": "m", "created_at": T, "message": msg, "done": False},
        {
            "model": "m",
            "created_at": T,
            "message": {"role": "assistant", "content": "", "tool_calls": calls},
            "done": False,
        },
    ]
    assert tr.final(T, TIMING)["done_reason"] == "stop"


# -- embeddings -----------------------------------------------------------------------------------------
def test_embed_request_and_inputs() -> None:
    assert wire.embed_inputs({"input": "a"}) == ["a"]
    assert wire.embed_inputs({"input": ["a", "b"]}) == ["a", "b"]
    assert wire.embed_inputs({"input": ""}) == []
    assert wire.embed_inputs({"prompt": "p"}, "prompt") == ["p"]
    for bad in ({"input": [1]}, {"input": 3}):
        with pytest.raises(InvalidRequest, match="input"):
            wire.embed_inputs(bad)
    assert wire.embed_request(["a"], "s", 2) == {
        "model": "s",
        "input": ["a"],
        "encoding_format": "float",
        "dimensions": 2,
    }
    with pytest.raises(InvalidRequest, match="dimensions"):
        wire.embed_request(["a"], "s", 0)


def test_embed_response_golden_cuts_and_renormalizes() -> None:
    resp = {
        "data": [{"index": 1, "embedding": [0.0, 1.0, 0.0]}, {"index": 0, "embedding": [3.0, 4.0, 12.0]}],
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    assert wire.embed_response(resp, "m", wire.Timing(10, 3), 2) == {
        "model": "m",
        "embeddings": [[0.6, 0.8], [0.0, 1.0]],
        "total_duration": 10,
        "load_duration": 3,
        "prompt_eval_count": 4,
    }
    assert wire.embeddings(resp) == [[3.0, 4.0, 12.0], [0.0, 1.0, 0.0]]


# -- models ---------------------------------------------------------------------------------------------
VERSION = VersionRecord(
    name="smollm2:135m",
    model="smollm2",
    tag="135m",
    format="gguf",
    digest="sha256:" + "ab" * 32,
    size=1234,
    source="file:///m/SmolLM2.gguf",
    metadata={
        "architecture": "llama",
        "parameter_size": "135M",
        "quantization": "Q4_1",
        "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
        "model_info": {"general.architecture": "llama", "llama.context_length": 8192},
    },
    created_at=datetime(2026, 1, 1, tzinfo=UTC),
    updated_at=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
)
DETAILS = {
    "parent_model": "",
    "format": "gguf",
    "family": "llama",
    "families": ["llama"],
    "parameter_size": "135M",
    "quantization_level": "Q4_1",
}


def test_tag_and_ps_entries() -> None:
    assert wire.tag_entry(VERSION) == {
        "name": "smollm2:135m",
        "model": "smollm2:135m",
        "modified_at": T,
        "size": 1234,
        "digest": "ab" * 32,
        "details": DETAILS,
    }
    assert wire.ps_entry(VERSION, datetime(2026, 1, 1, 0, 5, tzinfo=UTC)) == {
        "name": "smollm2:135m",
        "model": "smollm2:135m",
        "size": 1234,
        "digest": "ab" * 32,
        "details": DETAILS,
        "expires_at": "2026-01-01T00:05:00.000000Z",
        "size_vram": 0,
    }


def test_show_response_golden() -> None:
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert wire.show_response(VERSION, ("completion", "embedding")) == {
        "modelfile": f'# Modelfile generated by "superollama show"\nFROM file:///m/SmolLM2.gguf\n'
        f'TEMPLATE """{template}"""\n',
        "parameters": "",
        "template": template,
        "details": DETAILS,
        "model_info": {"general.architecture": "llama", "llama.context_length": 8192},
        "capabilities": ["completion", "embedding"],
        "modified_at": T,
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b'{"error":{"code":500,"message":"image input is not supported","type":"server_error"}}',
            "image input is not supported",
        ),
        (b'{"error":"plain"}', "plain"),
        (b"oops", "oops"),
        (b"", "fallback"),
    ],
)
def test_error_message(raw: bytes, message: str) -> None:
    assert wire.error_message(raw, "fallback") == message


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"num_predict": 4294967297}, "options.num_predict"),
        ({"num_predict": 10**12}, "options.num_predict"),
        ({"num_predict": -3}, "options.num_predict"),
        ({"num_predict": True}, "options.num_predict"),
        ({"num_predict": 1.5}, "options.num_predict"),
        ({"num_ctx": 2**31}, "options.num_ctx"),
        ({"num_ctx": 0}, "options.num_ctx"),
        ({"top_k": 2**31}, "options.top_k"),
        ({"seed": 2**63}, "options.seed"),
        ({"repeat_last_n": -2}, "options.repeat_last_n"),
        ({"top_p": 1.5}, "options.top_p"),
        ({"mirostat": 3}, "options.mirostat"),
        ({"use_mmap": 1}, "options.use_mmap"),
    ],
)
def test_options_out_of_range_name_the_option(options: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        wire.options_to_openai(options)
    assert info.value.param == param
    assert param in info.value.message


def test_options_at_their_limits_pass() -> None:
    out = wire.options_to_openai({"num_predict": 2**31 - 1, "seed": -(2**63), "top_k": -1, "num_ctx": 1})
    assert out == {"max_tokens": 2**31 - 1, "seed": -(2**63), "top_k": -1}
    assert wire.options_to_openai({"num_predict": -2}) == {}


@pytest.mark.parametrize("value", [1e300, "1e400", "nan", 2**70])
def test_a_keep_alive_beyond_go_durations_is_400(value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        wire.parse_keep_alive(value)
    assert info.value.param == "keep_alive"


def test_dimensions_and_context_are_range_checked() -> None:
    with pytest.raises(InvalidRequest, match="dimensions"):
        wire.embed_request(["x"], "m", 2**31)
    with pytest.raises(InvalidRequest, match="context"):
        wire.generate_flags({"context": [1, 2**31]})
