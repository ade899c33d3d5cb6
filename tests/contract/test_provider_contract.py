"""One behaviour for every ``Provider`` (openai, ollama, tgi), each against its loopback stand-in
(tests/e2e/standins.py): discovery (``models``), description (``show``, the ``DescribesModels``
capability), requests relayed to ``relay_base`` (chat, streamed chat, embeddings where the backend has
them), and the errors for a model the server does not have and for a server that is not there.

The stand-ins: an Ollama server (native ``/api`` and OpenAI-compatible ``/v1``) for both the ``ollama`` and
the ``openai`` providers, TGI's router for ``tgi``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import aiohttp
import pytest
from tests.e2e.standins import OllamaStandIn, TgiStandIn, ThreadedServer

from superollama.control.connection_models import DescribesModels
from superollama.core import Endpoint, Provider
from superollama.errors import NotFound, UpstreamError
from superollama.providers import OllamaProvider, OpenAICompatProvider, TgiProvider


@dataclass(frozen=True)
class Case:
    """A provider, the stand-in it talks to, the URL a user would configure, what the server serves."""

    kind: str
    make: Callable[[aiohttp.ClientSession], Provider]
    server: Callable[[], ThreadedServer]
    path: str  # appended to the stand-in's URL: the connection URL as a user writes it
    models: frozenset[str]
    embeds: bool


OLLAMA_MODELS = frozenset({"llama3.2:1b", "nomic-embed-text:latest"})
CASES = {
    "openai": Case("openai", OpenAICompatProvider, OllamaStandIn, "/v1", OLLAMA_MODELS, True),
    "ollama": Case("ollama", OllamaProvider, OllamaStandIn, "", OLLAMA_MODELS, True),
    "tgi": Case("tgi", TgiProvider, TgiStandIn, "", frozenset({TgiStandIn.MODEL_ID}), False),
}


@dataclass
class Subject:
    case: Case
    provider: Provider
    server: ThreadedServer
    ep: Endpoint
    http: aiohttp.ClientSession

    @property
    def chat_model(self) -> str:
        return min(self.case.models)  # llama3.2:1b, or TGI's only model


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[tuple[Case, ThreadedServer]]:
    case = CASES[request.param]
    server = case.server().start()
    try:
        yield case, server
    finally:
        server.stop()


@pytest.fixture
async def subject(served: tuple[Case, ThreadedServer]) -> AsyncIterator[Subject]:
    case, server = served
    async with aiohttp.ClientSession() as http:
        provider = case.make(http)
        assert provider.kind == case.kind
        ep = Endpoint(provider.relay_base(server.url + case.path), case.kind, "")
        yield Subject(case, provider, server, ep, http)


every_provider = pytest.mark.parametrize("served", sorted(CASES), indirect=True)
embedding_providers = pytest.mark.parametrize(
    "served", sorted(k for k, c in CASES.items() if c.embeds), indirect=True
)


@every_provider
async def test_models_lists_what_the_server_serves(subject: Subject) -> None:
    assert set(await subject.provider.models(subject.ep)) == subject.case.models


@every_provider
async def test_relay_base_takes_the_connection_url_with_or_without_its_suffix(subject: Subject) -> None:
    url = subject.server.url
    assert subject.provider.relay_base(url + subject.case.path) == url
    assert subject.provider.relay_base(url) == url


@every_provider
async def test_show_describes_a_model_and_refuses_an_unknown_one(subject: Subject) -> None:
    assert isinstance(subject.provider, DescribesModels)
    shown = await subject.provider.show(subject.ep, subject.chat_model)
    assert {"modelfile", "parameters", "template", "details", "model_info", "capabilities"} <= set(shown)
    assert "completion" in shown["capabilities"]
    with pytest.raises(NotFound):
        await subject.provider.show(subject.ep, "no-such-model:7b")


@every_provider
async def test_a_chat_relayed_to_relay_base_is_answered(subject: Subject) -> None:
    body = {"model": subject.chat_model, "messages": [{"role": "user", "content": "Say hello"}]}
    async with subject.http.post(f"{subject.ep.base_url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens"] > 0


@every_provider
async def test_a_streamed_chat_relayed_to_relay_base_ends_with_done(subject: Subject) -> None:
    body = {
        "model": subject.chat_model,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": True,
    }
    async with subject.http.post(f"{subject.ep.base_url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        raw = await resp.text()
    data = [line.removeprefix("data:").strip() for line in raw.splitlines() if line.startswith("data:")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}


@embedding_providers
async def test_embeddings_relayed_to_relay_base(subject: Subject) -> None:
    body = {"model": "nomic-embed-text:latest", "input": ["one", "two"]}
    async with subject.http.post(f"{subject.ep.base_url}/v1/embeddings", json=body) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    vectors = [d["embedding"] for d in answer["data"]]
    assert len(vectors) == 2 and len(vectors[0]) == OllamaStandIn.EMBED_DIMS and vectors[0] != vectors[1]


@every_provider
async def test_a_server_that_went_away_is_an_upstream_error_then_comes_back(subject: Subject) -> None:
    subject.server.go_down()
    with pytest.raises(UpstreamError) as down:
        await subject.provider.models(subject.ep)
    assert down.value.status == 503 and "cannot connect" in down.value.message
    # the failure is named by its kind, never by the upstream's address (issue 10, item 1)
    assert subject.ep.base_url.split("://", 1)[1].split("/", 1)[0] not in down.value.message
    subject.server.come_back()
    assert set(await subject.provider.models(subject.ep)) == subject.case.models


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_nothing_listening_is_an_upstream_error(kind: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"  # bound, never listening: refused
        async with aiohttp.ClientSession() as http:
            provider = CASES[kind].make(http)
            ep = Endpoint(provider.relay_base(url + CASES[kind].path), kind, "")
            with pytest.raises(UpstreamError) as refused:
                await provider.models(ep)
    assert refused.value.status == 503
    assert f":{port}" not in refused.value.message
