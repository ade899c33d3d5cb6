"""The connection providers against the local Ollama and TGI stand-ins (tests/e2e/standins.py; no real
Ollama or TGI can be installed here): discovery, health, the Ollama server's model management, and how
each backend failure maps onto our errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from tests.e2e.standins import OllamaStandIn, TgiStandIn

from superollama.core import Endpoint
from superollama.errors import InvalidRequest, NotFound, UpstreamError
from superollama.providers import OllamaProvider, OpenAICompatProvider, TgiProvider
from superollama.providers.http import mapped_error


@pytest.fixture
def ollama_server() -> Iterator[OllamaStandIn]:
    server = OllamaStandIn().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _ep(url: str) -> Endpoint:
    return Endpoint(url, "openai", "")


async def test_ollama_provider_lists_pulls_copies_deletes(
    ollama_server: OllamaStandIn, session: aiohttp.ClientSession
) -> None:
    provider = OllamaProvider(session)
    ep = _ep(provider.relay_base(ollama_server.url + "/api/"))
    assert sorted(await provider.models(ep)) == ["llama3.2:1b", "nomic-embed-text:latest"]

    events = [e async for e in provider.pull(ep, "qwen2.5:0.5b")]
    assert events[0] == {"status": "pulling manifest"} and events[-1] == {"status": "success"}
    assert ollama_server.bodies("POST", "/api/pull")[-1]["model"] == "qwen2.5:0.5b"
    assert "qwen2.5:0.5b" in await provider.models(ep)

    with pytest.raises(NotFound, match="file does not exist"):
        async for _ in provider.pull(ep, "no-such-model"):
            pass

    await provider.copy(ep, "qwen2.5:0.5b", "mine")
    await provider.delete(ep, "qwen2.5:0.5b")
    assert "mine:latest" in await provider.models(ep) and "qwen2.5:0.5b" not in await provider.models(ep)
    with pytest.raises(NotFound, match="model 'ghost' not found") as info:
        await provider.delete(ep, "ghost")
    assert info.value.status == 404 and "http://" not in info.value.message  # the server's own words

    ollama_server.go_down()
    with pytest.raises(UpstreamError, match="/api/tags") as down:
        await provider.models(ep)
    assert down.value.status == 503
    ollama_server.come_back()
    assert await provider.models(ep)


async def test_tgi_health_is_health_not_just_info(session: aiohttp.ClientSession) -> None:
    server = TgiStandIn().start()
    try:
        provider = TgiProvider(session)
        ep = _ep(provider.relay_base(server.url + "/v1"))
        assert await provider.models(ep) == [TgiStandIn.MODEL_ID]
        server.unhealthy = True  # the shard died: /info still answers
        with pytest.raises(UpstreamError, match=r"/health: HTTP 503 unhealthy"):
            await provider.models(ep)
    finally:
        server.stop()


def test_backend_errors_keep_their_meaning() -> None:
    assert isinstance(mapped_error(404, "gone"), NotFound)
    bad = mapped_error(422, "invalid")
    assert isinstance(bad, InvalidRequest) and bad.status == 422
    broken = mapped_error(500, "boom")
    assert isinstance(broken, UpstreamError) and broken.status == 502
    assert isinstance(mapped_error(500, "pull model manifest: file does not exist", in_stream=True), NotFound)


async def test_each_provider_describes_its_servers_models(
    ollama_server: OllamaStandIn, session: aiohttp.ClientSession
) -> None:
    """``show``: an Ollama server's own ``/api/show``; an OpenAI-compatible server's ``/v1/models`` entry
    (here Ollama's ``/v1``) and TGI's ``/info`` in the same shape; ``NotFound`` for a model it lacks."""
    ollama = OllamaProvider(session)
    ep = _ep(ollama.relay_base(ollama_server.url))
    shown = await ollama.show(ep, "llama3.2:1b")
    assert shown["details"]["family"] == "llama" and shown["capabilities"] == ["completion", "tools"]
    assert "# FROM llama3.2:1b\n" in shown["modelfile"] and "model_info" in shown
    with pytest.raises(NotFound, match="model 'ghost' not found"):
        await ollama.show(ep, "ghost")

    compat = OpenAICompatProvider(session)
    listed = await compat.show(_ep(compat.relay_base(ollama_server.url + "/v1")), "llama3.2:1b")
    assert listed["capabilities"] == ["completion"] and listed["details"]["format"] == ""
    assert listed["model_info"]["openai.owned_by"] == "library" and listed["modified_at"].endswith("Z")
    with pytest.raises(NotFound):
        await compat.show(_ep(compat.relay_base(ollama_server.url + "/v1")), "ghost")

    server = TgiStandIn().start()
    try:
        tgi = TgiProvider(session)
        tgi_ep = _ep(tgi.relay_base(server.url))
        described = await tgi.show(tgi_ep, TgiStandIn.MODEL_ID)
        assert described["parameters"].split() == ["num_ctx", "8192"]
        assert described["model_info"]["tgi.model_pipeline_tag"] == "text-generation"
        with pytest.raises(NotFound):
            await tgi.show(tgi_ep, "other/model")
        server.go_down()
        with pytest.raises(UpstreamError) as down:
            await tgi.show(tgi_ep, TgiStandIn.MODEL_ID)
        assert down.value.status == 503
    finally:
        server.stop()
