"""A text-generation-inference connection through a running gateway: ``superollama connect tgi URL``.

No TGI server (a GPU container) can run here: the server connected to is the local stand-in of
tests/e2e/standins.py (``/info``, ``/health``, the Messages API with TGI's ``data:{…}`` SSE). Its one
model is discovered as ``NAME/<model_id>``; chat works from the OpenAI SDK and the ``ollama`` client; a
model shard that dies (``/health`` 503 while ``/info`` still answers) and a server that goes away both
make the model 503 with a clear message until it recovers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ollama
import openai
import pytest
from openai import OpenAI
from tests.e2e.conftest import ServerProcess, wait_until
from tests.e2e.standins import TgiStandIn, reply_for
from tests.e2e.test_connections import ledger_row

MODEL = f"hf/{TgiStandIn.MODEL_ID}"


@pytest.fixture
def gateway(tmp_path: Any) -> Iterator[ServerProcess]:
    home = tmp_path / "gw"
    home.mkdir()
    srv = ServerProcess(home, SUPEROLLAMA_BUNDLED_MODEL="false", SUPEROLLAMA_CONNECTION_REFRESH="0.3").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def tgi() -> Iterator[TgiStandIn]:
    server = TgiStandIn().start()
    try:
        yield server
    finally:
        server.stop()


def _healthy(gateway: ServerProcess) -> bool:
    items = gateway.admin("GET", "/admin/v1/connections").json()["connections"]
    return bool(next(c for c in items if c["name"] == "hf")["healthy"])


def test_tgi_connection_chat_health_and_recovery(gateway: ServerProcess, tgi: TgiStandIn) -> None:
    result = gateway.cli("connect", "tgi", tgi.url + "/v1", "--name", "hf")
    assert result.returncode == 0, result.stderr
    assert MODEL in result.stdout and "healthy" in result.stdout

    client = OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=30)
    assert [(m.id, m.owned_by) for m in client.models.list()] == [(MODEL, "hf")]
    assert client.models.retrieve(MODEL).id == MODEL
    messages: Any = [{"role": "user", "content": "hello tgi"}]
    out = client.chat.completions.create(model=MODEL, messages=messages)
    assert out.choices[0].message.content == reply_for("hello tgi")
    assert out.usage is not None and out.usage.completion_tokens == 4
    assert tgi.bodies("POST", "/v1/chat/completions")[-1]["model"] == TgiStandIn.MODEL_ID

    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply_for("hello tgi")
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 6

    answer = ollama.Client(host=gateway.url, timeout=30).chat(model=MODEL, messages=messages)
    assert answer.message.content == reply_for("hello tgi") and answer.done

    # the model shard dies: TGI's router still answers /info, /health turns 503
    tgi.unhealthy = True
    assert wait_until(lambda: not _healthy(gateway), timeout=10)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=MODEL, messages=messages)
    assert info.value.status_code == 503
    assert "connection 'hf' is unavailable" in info.value.message and "/health" in info.value.message
    tgi.unhealthy = False
    assert wait_until(lambda: _healthy(gateway), timeout=10)
    assert client.chat.completions.create(model=MODEL, messages=messages).choices

    # the whole server goes away, then comes back
    tgi.go_down()
    assert wait_until(lambda: not _healthy(gateway), timeout=10)
    with pytest.raises(openai.APIStatusError) as gone:
        client.chat.completions.create(model=MODEL, messages=messages)
    assert gone.value.status_code == 503 and "connection 'hf' is unavailable" in gone.value.message
    tgi.come_back()
    assert wait_until(lambda: _healthy(gateway), timeout=10)
    out = client.chat.completions.create(model=MODEL, messages=messages)
    assert out.choices[0].message.content == reply_for("hello tgi")

    events = gateway.admin("GET", "/admin/v1/events", params={"target": "hf"}).json()["events"]
    actions = [e["action"] for e in events]
    assert actions.count("connection.unhealthy") == 2 and actions.count("connection.healthy") == 2
    assert actions[0] == "connection.healthy"

    result = gateway.cli("connections", "pull", "hf", "some/model")
    assert result.returncode == 1 and "is a tgi server: it cannot pull models" in result.stderr


def test_tgi_streams_are_metered_and_described(gateway: ServerProcess, tgi: TgiStandIn) -> None:
    """TGI's Messages API takes ``stream_options``: a stream whose client did not ask for usage is
    metered with TGI's own counts, and the client sees no usage chunk. ``/api/show`` describes the model
    from ``/info``; pull, copy and delete are a clear 400."""
    assert gateway.cli("connect", "tgi", tgi.url, "--name", "hf").returncode == 0
    client = OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=30)
    messages: Any = [{"role": "user", "content": "count me"}]
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply_for("count me")
    assert all(c.choices and c.usage is None for c in chunks)
    assert tgi.bodies("POST", "/v1/chat/completions")[-1]["stream_options"] == {"include_usage": True}
    row = ledger_row(gateway, lambda r: r["stream"] and r["connection"] == "hf")
    assert (row["prompt_tokens"], row["completion_tokens"], row["usage_estimated"]) == (2, 4, False)

    ollama_client = ollama.Client(host=gateway.url, timeout=30)
    shown = ollama_client.show(MODEL)
    assert shown.capabilities == ["completion"] and shown.parameters is not None
    assert shown.parameters.split() == ["num_ctx", "8192"]
    assert shown.modelinfo is not None and shown.modelinfo["tgi.max_total_tokens"] == 8192
    assert shown.modelinfo["general.name"] == TgiStandIn.MODEL_ID
    assert shown.modelfile is not None and f"FROM {MODEL}\n" in shown.modelfile
    with pytest.raises(ollama.ResponseError) as missing:
        ollama_client.show("hf/other/model")
    assert missing.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as no_copy:
        ollama_client.copy(MODEL, "hf/mine")
    assert no_copy.value.status_code == 400
    assert "is a tgi server: it cannot copy models" in no_copy.value.error
    with pytest.raises(ollama.ResponseError) as no_delete:
        ollama_client.delete(MODEL)
    assert no_delete.value.status_code == 400 and "cannot delete models" in no_delete.value.error
