"""The transformers and vLLM runtimes without models: request parsing, stop strings, command lines,
environment, cheap imports."""

from __future__ import annotations

import base64
import itertools
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from superollama.core import Artifact, InstanceSpec
from superollama.errors import ModelLoadFailed
from superollama.runtimes import (
    TRANSFORMERS_WORKER,
    VLLM_SUPERVISOR,
    TransformersRuntime,
    VllmRuntime,
    vllm_available,
)
from superollama.runtimes._logprobs import TokenLogprob
from superollama.runtimes._openai_shapes import (
    Reply,
    RequestError,
    StopText,
    embeddings_response,
    parse_chat,
    parse_completion,
    parse_embeddings,
)
from superollama.runtimes.process import _is_worker_cmdline
from superollama.runtimes.vllm_supervisor import parse_args as supervisor_args

MSG = [{"role": "user", "content": "hi"}]


def folder_spec(path: Path, device: str = "cpu", fmt: str = "safetensors", **options: Any) -> InstanceSpec:
    return InstanceSpec(
        "inst-1", "smollm2:hf", Artifact("smollm2", fmt, path), "transformers", device, options
    )


# -- request parsing ---------------------------------------------------------------------------------


def test_chat_parsing_reads_sampling_and_stream_options() -> None:
    params = parse_chat(
        {
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": None},
            ],
            "max_tokens": 9,
            "max_completion_tokens": 5,
            "temperature": 0,
            "top_p": 0.5,
            "seed": 7,
            "stop": "\n",
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert [dict(m) for m in params.messages] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": ""},
    ]
    s = params.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.seed, s.stop) == (5, 0.0, 0.5, 7, ("\n",))
    assert params.stream and params.include_usage
    assert parse_chat({"messages": MSG}).sampling.max_tokens is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MSG, "n": 3}, "n"),
        ({"messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": MSG, "top_p": 1.5}, "top_p"),
        ({"messages": MSG, "max_tokens": 0}, "max_tokens"),
        ({"messages": MSG, "seed": "x"}, "seed"),
        ({"messages": MSG, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": MSG, "logprobs": 1}, "logprobs"),
        ({"messages": MSG, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"messages": MSG, "logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"messages": MSG, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": MSG, "response_format": {"type": "yaml"}}, "response_format"),
        ({"messages": MSG, "functions": [{"name": "f"}]}, "functions"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
        ({"messages": "hi"}, "messages"),
    ],
)
def test_chat_parsing_refuses_with_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_chat(body)
    assert (info.value.status, info.value.param) == (400, param)


def test_completion_and_embedding_parsing() -> None:
    assert parse_completion({"prompt": ["one"]}).prompt == "one"
    assert parse_completion({"prompt": "x", "logprobs": 5}).sampling.logprobs == 5
    assert parse_completion({"prompt": "x"}).sampling.logprobs is None
    for bad in ({"prompt": ["a", "b"]}, {"prompt": "x", "echo": True}, {"prompt": "x", "logprobs": 6}):
        with pytest.raises(RequestError):
            parse_completion(bad)
    assert parse_embeddings({"input": "x"}).inputs == ("x",)
    params = parse_embeddings({"input": ["a", "b"], "encoding_format": "base64", "dimensions": 8})
    assert (params.inputs, params.base64, params.dimensions) == (("a", "b"), True, 8)
    for bad in ({"input": []}, {"input": [[1, 2]]}, {"input": 3}, {"input": "x", "encoding_format": "hex"}):
        with pytest.raises(RequestError):
            parse_embeddings(bad)


# -- stop strings ------------------------------------------------------------------------------------


def feed(stops: list[str], pieces: list[str]) -> tuple[list[str], bool, str]:
    """Grow the text piece by piece like a decoder does; return what went out, whether it stopped."""
    tracker, text, out = StopText(stops), "", []
    for piece in pieces:
        text += piece
        delta, stopped = tracker.update(text)
        if delta:
            out.append(delta)
        if stopped:
            return out, True, tracker.sent
    tail = tracker.finish(text)
    if tail:
        out.append(tail)
    return out, False, tracker.sent


def test_stop_text_holds_back_a_possible_stop_and_cuts_before_it() -> None:
    out, stopped, sent = feed(["END"], ["Hello ", "wor", "ld E", "N", "D and more"])
    assert stopped and sent == "Hello world " and "".join(out) == sent
    assert out == ["Hello ", "wor", "ld "]  # "E" and "EN" were held back, never sent


def test_stop_text_releases_a_held_tail_that_did_not_become_a_stop() -> None:
    out, stopped, sent = feed(["END"], ["Hello E", "NOUGH", " E"])
    assert not stopped and sent == "Hello ENOUGH E" and "".join(out) == sent
    assert feed([], ["a", "b"])[2] == "ab"
    assert feed(["x", "yz"], ["aay", "z"])[2] == "aa"


def test_stop_text_waits_for_a_whole_character() -> None:
    tracker = StopText([])
    assert tracker.update("caf\ufffd") == ("caf", False)
    assert tracker.update("café") == ("é", False)


# -- response shapes ---------------------------------------------------------------------------------


def test_reply_shapes_follow_openai() -> None:
    reply = Reply("chatcmpl-1", 10, "m")
    use = {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
    body = reply.chat("hi", "stop", use)
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "hi"
    chunk = reply.chat_chunk({"content": "h"}, None, True)
    assert chunk["object"] == "chat.completion.chunk" and chunk["usage"] is None
    assert "usage" not in reply.chat_chunk({}, "stop", False)
    assert reply.usage_chunk("chat.completion.chunk", use) == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 10,
        "model": "m",
        "system_fingerprint": None,
        "choices": [],
        "usage": use,
    }
    assert reply.completion_chunk("x", None, False)["choices"][0]["text"] == "x"


def test_logprob_shapes_follow_openai() -> None:
    assert parse_chat({"messages": MSG, "logprobs": True}).sampling.logprobs == 0
    assert parse_chat({"messages": MSG, "logprobs": True, "top_logprobs": 20}).sampling.logprobs == 20
    assert parse_chat({"messages": MSG, "logprobs": False}).sampling.logprobs is None
    split = "€".encode()
    entries = [
        TokenLogprob(b"Hi", -0.25, ((b"Hi", -0.25), (b"Yo", -1.5)), 0),
        TokenLogprob(split[:2], -2.0, ((split[:2], -2.0),), 2),
    ]
    reply = Reply("chatcmpl-1", 10, "m")
    use = {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    chat = reply.chat("Hi", "length", use, logprobs=entries)["choices"][0]["logprobs"]
    assert chat["refusal"] is None
    assert chat["content"][0] == {
        "token": "Hi",
        "logprob": -0.25,
        "bytes": [72, 105],
        "top_logprobs": [
            {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
            {"token": "Yo", "logprob": -1.5, "bytes": [89, 111]},
        ],
    }
    assert chat["content"][1]["token"] == "bytes:\\xe2\\x82" and chat["content"][1]["bytes"] == [0xE2, 0x82]
    assert reply.chat("Hi", "stop", use)["choices"][0]["logprobs"] is None
    legacy = reply.completion("Hi", "length", use, entries)["choices"][0]["logprobs"]
    assert legacy == {
        "tokens": ["Hi", "bytes:\\xe2\\x82"],
        "token_logprobs": [-0.25, -2.0],
        "top_logprobs": [{"Hi": -0.25, "Yo": -1.5}, {"bytes:\\xe2\\x82": -2.0}],
        "text_offset": [0, 2],
    }
    chunk = reply.chat_chunk({"content": "Hi"}, None, False, entries[:1])
    assert chunk["choices"][0]["logprobs"]["content"][0]["token"] == "Hi"


def test_embeddings_base64_is_little_endian_float32() -> None:
    body = embeddings_response("m", [[1.0, -2.5]], as_base64=True, prompt_tokens=3)
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == (1.0, -2.5)
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


# -- transformers runtime ----------------------------------------------------------------------------


def test_transformers_accepts_a_safetensors_folder_only(tmp_path: Path) -> None:
    runtime = TransformersRuntime(tmp_path)
    assert (runtime.name, runtime.provider) == ("transformers", "openai")
    assert runtime.accepts(folder_spec(tmp_path).artifact)
    assert not runtime.accepts(folder_spec(tmp_path / "missing").artifact)
    assert not runtime.accepts(folder_spec(tmp_path, fmt="gguf").artifact)


def test_transformers_command_carries_spec_and_options(tmp_path: Path) -> None:
    runtime = TransformersRuntime(tmp_path, dtype="bfloat16", threads=2, python="/py")
    argv = runtime.command(folder_spec(tmp_path, "cuda:1", task="chat"))
    assert argv[:3] == ("/py", "-m", TRANSFORMERS_WORKER)
    pairs = dict(itertools.pairwise(argv))
    assert pairs["--model"] == str(tmp_path)
    assert (pairs["--device"], pairs["--dtype"], pairs["--task"], pairs["--threads"]) == (
        "cuda:1",
        "bfloat16",
        "chat",
        "2",
    )
    assert (
        dict(itertools.pairwise(runtime.command(folder_spec(tmp_path, dtype="float32"))))["--dtype"]
        == "float32"
    )
    assert _is_worker_cmdline(list(argv), "inst-1", TRANSFORMERS_WORKER)
    assert pairs["--host"] == "127.0.0.1"  # loopback by default; a cluster node's actor sets its own address
    runtime.host = "10.0.0.6"
    assert dict(itertools.pairwise(runtime.command(folder_spec(tmp_path))))["--host"] == "10.0.0.6"
    with pytest.raises(ModelLoadFailed, match="dtype"):
        runtime.command(folder_spec(tmp_path, dtype="int4"))
    with pytest.raises(ValueError):
        TransformersRuntime(tmp_path, dtype="fp8")


async def test_transformers_refuses_another_format_before_spawning(tmp_path: Path) -> None:
    async def spawn(_: Any) -> Any:
        raise AssertionError("must not spawn")

    with pytest.raises(ModelLoadFailed, match="cannot serve format 'gguf'"):
        await TransformersRuntime(tmp_path, spawn=spawn).start(folder_spec(tmp_path, fmt="gguf"))


def test_importing_the_runtimes_pulls_no_heavy_package() -> None:
    code = (
        "import sys; import superollama.runtimes as r; r.TransformersRuntime; r.VllmRuntime;"
        "import superollama.runtimes.vllm_supervisor;"
        "heavy = ('torch', 'transformers', 'sentence_transformers', 'vllm');"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- vLLM runtime ------------------------------------------------------------------------------------


def test_vllm_command_is_supervisor_then_vllm(tmp_path: Path) -> None:
    runtime = VllmRuntime(tmp_path, python="/venv/bin/python", max_model_len=1024, ready_timeout=90)
    argv = runtime.command(folder_spec(tmp_path))
    cut = argv.index("--")
    head, server = argv[:cut], argv[cut + 1 :]
    assert head[1:3] == ("-m", VLLM_SUPERVISOR)
    assert _is_worker_cmdline(list(argv), "inst-1", VLLM_SUPERVISOR)
    assert dict(itertools.pairwise(head))["--ready-timeout"] == "90"
    assert server[:3] == ("/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server")
    pairs = dict(itertools.pairwise(server))
    assert (pairs["--model"], pairs["--served-model-name"], pairs["--max-model-len"]) == (
        str(tmp_path),
        "smollm2:hf",
        "1024",
    )
    assert pairs["--dtype"] == "bfloat16" and "--enforce-eager" in server
    assert "--runner" not in server and "--gpu-memory-utilization" not in server
    assert "--port" not in server  # the supervisor picks the port
    options, command = supervisor_args(list(argv[3:]))
    assert (options.instance_id, command) == ("inst-1", list(server))


def test_vllm_pooling_folders_and_gpu_flags(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text("[]")
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 512}')
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 256}')
    runtime = VllmRuntime(tmp_path, cpu_kvcache_gib=2, gpu_memory_utilization=0.5)
    cpu = folder_spec(tmp_path)
    pairs = dict(itertools.pairwise(runtime.server_command(cpu)))
    assert (pairs["--runner"], pairs["--max-model-len"]) == ("pooling", "256")  # capped by the model's own
    assert runtime.environment(cpu)["VLLM_CPU_KVCACHE_SPACE"] == "2"
    gpu = folder_spec(tmp_path, "cuda:1", runner="generate")
    server = runtime.server_command(gpu)
    assert "--runner" not in server
    assert dict(itertools.pairwise(server))["--gpu-memory-utilization"] == "0.5"
    env = runtime.environment(gpu)
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and "VLLM_CPU_KVCACHE_SPACE" not in env


async def test_vllm_missing_is_a_clear_model_load_failure(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    no_vllm = sys.executable  # the test environment has no vllm package
    if await vllm_available(no_vllm):
        pytest.skip("vllm is installed in the test interpreter")
    assert not await vllm_available(str(tmp_path / "no-such-python"))
    with pytest.raises(ModelLoadFailed, match=r"vLLM is not installed .*superollama\[vllm\]"):
        await VllmRuntime(tmp_path, python=no_vllm).start(folder_spec(tmp_path))


def test_vllm_chat_instances_get_a_tool_parser_and_pooling_ones_none(tmp_path: Path) -> None:
    runtime = VllmRuntime(tmp_path)
    chat = runtime.server_command(folder_spec(tmp_path))
    assert "--enable-auto-tool-choice" in chat
    assert dict(itertools.pairwise(chat))["--tool-call-parser"] == "hermes"
    # named and required calls are decoded against the parameters' schema, not only strict tools
    assert runtime.environment(folder_spec(tmp_path))["VLLM_ENFORCE_STRICT_TOOL_CALLING"] == "0"
    other = runtime.server_command(folder_spec(tmp_path, tool_call_parser="llama3_json"))
    assert dict(itertools.pairwise(other))["--tool-call-parser"] == "llama3_json"
    off = runtime.server_command(folder_spec(tmp_path, tool_call_parser=""))
    assert "--enable-auto-tool-choice" not in off and "--tool-call-parser" not in off
    pooling = runtime.server_command(folder_spec(tmp_path, runner="pooling"))
    assert "--enable-auto-tool-choice" not in pooling and "--tool-call-parser" not in pooling
