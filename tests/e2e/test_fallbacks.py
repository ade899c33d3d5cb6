"""Fallbacks and breakers through a real ``serve``: a connection's model whose backend (a local stand-in)
answers 500s, then is killed, falls back to the bundled SmolLM2 on llama.cpp (``SUPEROLLAMA_FALLBACKS``);
its breaker opens after two failures, so later requests skip it and go to the fallback at once; the admin
API and /metrics show it. A model without a fallback keeps its error, in the client's protocol."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from tests.e2e.conftest import ServerProcess, wait_until
from tests.e2e.standins import StandIn

PRIMARY = "lab/echo-1"
HI = [{"role": "user", "content": "Say hi"}]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[ServerProcess]:
    home = tmp_path / "gw"
    home.mkdir()
    srv = ServerProcess(
        home,
        SUPEROLLAMA_CONNECTION_REFRESH="0.3",
        SUPEROLLAMA_FALLBACKS=f"{PRIMARY}=smollm2:135m",
        SUPEROLLAMA_BREAKER_FAILURES="2",
        SUPEROLLAMA_BREAKER_COOLDOWN="600",
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_a_fallback_answers_when_the_primary_backend_fails_or_dies(
    gateway: ServerProcess, stand_in: StandIn
) -> None:
    url = f"http://127.0.0.1:{stand_in.port}"
    assert gateway.cli("connect", "openai", url, "--name", "lab").returncode == 0
    client = OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=120)

    def ask() -> tuple[str, str | None]:
        raw = client.chat.completions.with_raw_response.create(model=PRIMARY, messages=HI, max_tokens=4)
        out = raw.parse()
        return out.choices[0].message.content or "", raw.headers.get("x-superollama-fallback")

    assert ask() == ("ih yaS", None)  # healthy: the stand-in answers (reversed), no fallback

    stand_in.failing = True
    for _ in range(2):  # 500s: each is answered by SmolLM2 instead
        text, fallback = ask()
        assert fallback == "smollm2:135m" and text
    assert stand_in.chats == 3
    state = gateway.admin("GET", "/admin/v1/resilience").json()
    assert [(b["instance"], b["state"]) for b in state["breakers"]["instances"]] == [
        (f"conn:{PRIMARY}", "open")
    ]
    assert state["fallbacks"]["taken"] == [{"from": PRIMARY, "to": "smollm2:135m", "count": 2}]

    text, fallback = ask()  # the breaker is open: the stand-in is not asked at all
    assert fallback == "smollm2:135m" and text and stand_in.chats == 3
    metrics = httpx.get(gateway.url + "/metrics", timeout=30).text
    assert f'superollama_circuit_breakers{{instance="conn:{PRIMARY}",state="open"}} 1' in metrics
    assert f'superollama_fallbacks_total{{model="{PRIMARY}",fallback="smollm2:135m"}} 3' in metrics

    ollama = httpx.post(
        gateway.url + "/api/chat", json={"model": PRIMARY, "messages": HI, "stream": False}, timeout=120
    )
    assert ollama.status_code == 200 and ollama.headers["x-superollama-fallback"] == "smollm2:135m"
    assert ollama.json()["message"]["content"] and stand_in.chats == 3

    stand_in.stop()  # killed: the connection turns unhealthy, and its model still falls back
    assert wait_until(lambda: _unhealthy(gateway), timeout=15)
    stream = client.chat.completions.create(model=PRIMARY, messages=HI, max_tokens=4, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_without_a_fallback_the_error_stays_the_primarys(gateway: ServerProcess, stand_in: StandIn) -> None:
    assert (
        gateway.cli("connect", "openai", f"http://127.0.0.1:{stand_in.port}", "--name", "solo").returncode
        == 0
    )
    stand_in.failing = True
    client = OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=60)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="solo/echo-1", messages=HI)
    assert info.value.status_code == 502 and "internal error" in info.value.message
    ollama = httpx.post(
        gateway.url + "/api/chat", json={"model": "solo/echo-1", "messages": HI, "stream": False}, timeout=60
    )
    assert ollama.status_code == 502 and set(ollama.json()) == {"error"}


def _unhealthy(gateway: ServerProcess) -> bool:
    connections = gateway.admin("GET", "/admin/v1/connections").json()["connections"]
    return any(c["name"] == "lab" and not c["healthy"] for c in connections)
