"""The transformers worker's HTTP side with a fake engine (no torch): turns, the busy queue, disconnects,
shutdown, SSE shape."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from tests.waiting import wait_until

from superollama.runtimes._hf_engine import Outcome
from superollama.runtimes._logprobs import Piece
from superollama.runtimes._openai_shapes import Sampling
from superollama.runtimes.transformers_worker import Worker

MSG = [{"role": "user", "content": "hi"}]


class FakeChat:
    """Emits "w0 w1 …" one word every ``step`` seconds, like a decoder on its own thread."""

    task = "chat"

    def __init__(self, step: float = 0.01) -> None:
        self.step = step
        self.running = 0
        self.most_at_once = 0
        self.cancelled = 0

    def chat_prompt(self, messages: Sequence[Any], tools: Any = None) -> list[int]:
        return [1, 2, 3]

    def text_prompt(self, prompt: str) -> list[int]:
        return [1, 2]

    def check_room(self, prompt: Sequence[int], sampling: Sampling) -> int:
        return sampling.max_tokens or 1000

    def generate(
        self,
        prompt: Sequence[int],
        sampling: Sampling,
        cancel: threading.Event,
        emit: Callable[[Piece], None],
    ) -> Outcome:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            text, finish = "", "length"
            for i in range(self.check_room(prompt, sampling)):
                if cancel.is_set():
                    self.cancelled += 1
                    finish = "cancelled"
                    break
                time.sleep(self.step)  # a stand-in: a decoder's pace, one word per step
                emit(Piece(f"w{i} "))
                text += f"w{i} "
            return Outcome(text, finish, len(prompt), len(text.split()))
        finally:
            self.running -= 1


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient[Any, Any], Worker, FakeChat]]:
    engine = FakeChat()
    worker = Worker(engine, "fake", max_queue=2)
    server = TestServer(worker.app(), handler_cancellation=True)
    async with TestClient(server) as client:
        yield client, worker, engine
    worker.stop_all()


async def test_requests_take_turns_on_the_model(served: Any) -> None:
    client, _, engine = served
    bodies = [{"messages": MSG, "max_tokens": 5} for _ in range(3)]
    responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))
    assert [r.status for r in responses] == [200, 200, 200]
    texts = [(await r.json())["choices"][0]["message"]["content"] for r in responses]
    assert texts == ["w0 w1 w2 w3 w4 "] * 3
    assert engine.most_at_once == 1


async def test_a_full_queue_answers_503_busy(served: Any) -> None:
    client, _, engine = served
    slow = [
        asyncio.create_task(client.post("/v1/chat/completions", json={"messages": MSG})) for _ in range(3)
    ]

    async def full() -> bool:
        health = await (await client.get("/health")).json()
        return engine.running == 1 and health["queued"] == 2

    await wait_until(full, what="one request generating, two queued: the queue (2) is full")
    resp = await client.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 1})
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "server_busy"
    for task in slow:
        task.cancel()
    await asyncio.gather(*slow, return_exceptions=True)


async def test_a_dropped_stream_cancels_its_generation(served: Any) -> None:
    client, _, engine = served
    url = str(client.make_url("/v1/chat/completions"))
    async with aiohttp.ClientSession() as own, own.post(url, json={"messages": MSG, "stream": True}) as resp:
        await resp.content.readline()
        await resp.content.readline()
        await resp.content.readline()
    await wait_until(lambda: engine.cancelled and not engine.running, what="the generation cancelled")
    assert engine.cancelled == 1


async def test_a_dropped_plain_request_cancels_its_generation(served: Any) -> None:
    client, _, engine = served
    task = asyncio.create_task(client.post("/v1/chat/completions", json={"messages": MSG}))
    await wait_until(lambda: engine.running == 1, what="the generation to start")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await wait_until(lambda: engine.cancelled, what="the generation cancelled")
    assert engine.cancelled == 1


async def test_stream_shape_with_usage_and_done(served: Any) -> None:
    client, _, _ = served
    body = {"prompt": "x", "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    resp = await client.post("/v1/completions", json=body)
    assert resp.headers["Content-Type"] == "text/event-stream"
    lines = [line for line in (await resp.text()).split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "w0 w1 w2 "
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3


async def test_shutdown_interrupts_with_a_503(served: Any) -> None:
    client, worker, engine = served
    task = asyncio.create_task(client.post("/v1/chat/completions", json={"messages": MSG}))
    await wait_until(lambda: engine.running == 1, what="the generation to start")
    worker.stop_all()
    resp = await task
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "instance_stopping"
