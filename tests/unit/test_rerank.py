"""Rerank without a network: the wire edge (``wire.rerank``), the gateway route over an in-process mock
transport (dialects, refusals that are not breaker failures, fallbacks), the transformers worker's route
with a fake engine, and how the runtimes recognise a cross-encoder."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from tests.doubles import Counts, NoStarter
from tests.mock_transport import MockTransport, Reply, Sent

from superollama.control import Route, RouteTarget, RoutingHolder, RoutingTable
from superollama.control.swap import http_warmup
from superollama.core import Artifact, Endpoint, InstanceSpec
from superollama.errors import InvalidRequest, ModelLoadFailed
from superollama.gateway import error_middleware
from superollama.gateway.exchange import EXCHANGE, Exchange
from superollama.gateway.middleware import AnswerHeaders
from superollama.gateway.openai_routes import ModelTargets
from superollama.gateway.rerank_routes import RerankRoutes
from superollama.gateway.resilience import Resilience, parse_fallbacks
from superollama.gateway.translated import Backend
from superollama.gateway.transport import Mounts
from superollama.runtimes._hf_engine import detect_task
from superollama.runtimes._hf_rerank import is_cross_encoder
from superollama.runtimes.llamacpp import LlamaCppRuntime, is_reranker
from superollama.runtimes.transformers_worker import Worker
from superollama.security import Budgets, KeyCache, MemoryRateLimiter, PriceTable, Security
from superollama.wire import rerank as wire

DOCS = ["a cat", "a dog", "a bird"]
BODY = {"model": "m", "query": "q", "documents": DOCS}
EXCHANGES = web.AppKey("exchanges", list[Exchange])


# -- wire -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": ""}, "model"),
        ({"query": None}, "query"),
        ({"query": "  "}, "query"),
        ({"documents": "a cat"}, "documents"),
        ({"documents": []}, "documents"),
        ({"documents": ["ok", {"title": "no text"}]}, "documents"),
        ({"documents": ["x"] * (wire.MAX_DOCUMENTS + 1)}, "documents"),
        ({"top_n": -1}, "top_n"),
        ({"top_n": True}, "top_n"),
        ({"top_n": 1.5}, "top_n"),
        ({"return_documents": "yes"}, "return_documents"),
        ({"max_tokens_per_doc": 0}, "max_tokens_per_doc"),
        ({"relevant_spans": {"mode": "auto"}}, "relevant_spans"),
    ],
)
def test_bad_requests_name_their_field(change: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        wire.parse({**BODY, **change})
    assert info.value.param == param and info.value.status == 400


def test_a_request_takes_strings_or_text_objects_and_top_n_zero_is_all() -> None:
    req = wire.parse({**BODY, "documents": ["a cat", {"text": "a dog", "id": 7}], "top_n": 0})
    assert req.documents == ("a cat", "a dog") and req.top_n is None and not req.return_documents
    assert wire.parse({**BODY, "top_n": 2, "return_documents": True}).top_n == 2


def test_search_units_are_a_query_over_up_to_100_documents() -> None:
    def units(n: int) -> int:
        return wire.search_units(wire.parse({**BODY, "documents": ["d"] * n}))

    assert (units(1), units(100), units(101), units(250)) == (1, 1, 2, 3)


def test_backend_bodies_ask_every_result_in_each_dialect() -> None:
    req = wire.parse({**BODY, "top_n": 1, "return_documents": True, "max_tokens_per_doc": 64})
    assert wire.backend_body(req, "served", "jina") == {
        "model": "served",
        "query": "q",
        "documents": DOCS,
        "top_n": 3,
        "return_documents": False,
        "max_tokens_per_doc": 64,
    }
    assert wire.backend_body(req, "served", "tei") == {
        "query": "q",
        "texts": DOCS,
        "truncate": True,
        "return_text": False,
    }


def test_backend_answers_are_checked() -> None:
    jina = {"results": [{"index": 1, "relevance_score": 0.9}], "usage": {"total_tokens": 12}}
    assert wire.parse_backend(jina, "jina", 3) == wire.Ranked(((1, 0.9),), 12)
    tei = [{"index": 2, "score": 0.5}, {"index": 0, "score": 0.25}]
    assert wire.parse_backend(tei, "tei", 3) == wire.Ranked(((2, 0.5), (0, 0.25)), None)
    for bad in (
        [{"index": 3, "score": 0.5}],  # out of range
        [{"index": 0, "score": 0.5}, {"index": 0, "score": 0.4}],  # twice the same document
        [{"index": 0, "score": math.nan}],
        [{"index": "0", "score": 0.5}],
        {"error": "boom"},
    ):
        assert wire.parse_backend(bad, "tei", 3) is None, bad
    assert wire.parse_backend([], "jina", 3) is None


def test_answers_are_sorted_cut_and_shaped_per_api() -> None:
    req = wire.parse({**BODY, "top_n": 2, "return_documents": True})
    ranked = wire.Ranked(((0, 0.1), (1, 0.7), (2, 0.7)), 9)
    v2 = wire.render(req, ranked, api="v2", response_id="id", tokens=9)
    assert v2 == {
        "id": "id",
        "results": [  # a tie: the earlier document first
            {"index": 1, "relevance_score": 0.7, "document": {"text": "a dog"}},
            {"index": 2, "relevance_score": 0.7, "document": {"text": "a bird"}},
        ],
        "meta": {
            "api_version": {"version": "2", "is_experimental": False},
            "billed_units": {"search_units": 1},
            "tokens": {"input_tokens": 9, "output_tokens": 0},
        },
    }
    v1 = wire.render(wire.parse(BODY), ranked, api="v1", response_id="id", tokens=None)
    assert [r for r in v1["results"] if "document" in r] == []
    assert (v1["model"], v1["usage"], "tokens" in v1["meta"]) == (
        "m",
        {"prompt_tokens": 0, "total_tokens": 0},
        False,
    )


# -- the gateway route ------------------------------------------------------------------------------------


def _target(instance: str, kind: str | None = None) -> RouteTarget:
    endpoint = Endpoint(f"http://{instance}", "openai", f"served-{instance}", server_kind=kind)
    return RouteTarget(instance, endpoint)


def _route(name: str, instance: str, kind: str | None = None) -> Route:
    return Route(name, name, True, 0, (_target(instance, kind),))


@web.middleware
async def _exchanges(request: web.Request, handler: Any) -> web.StreamResponse:
    request[EXCHANGE] = ex = Exchange(request_id="r", protocol="openai")
    response: web.StreamResponse = await handler(request)
    request.app[EXCHANGES].append(ex)
    return response


Make = Callable[[MockTransport, list[Route], Resilience], TestClient]


@pytest.fixture
async def gateway() -> AsyncIterator[Make]:
    clients: list[TestClient] = []

    def make(transport: MockTransport, routes: list[Route], resilience: Resilience) -> TestClient:
        holder = RoutingHolder()
        holder.publish(RoutingTable.build(routes, 1))
        limiter = MemoryRateLimiter()
        security = Security(
            KeyCache(), limiter, Budgets(PriceTable.parse(None), limiter), auth_required=False
        )
        targets = ModelTargets(holder, NoStarter(), Counts(), security, resilience)
        app = web.Application(middlewares=[_exchanges, error_middleware])
        app[EXCHANGES] = []
        AnswerHeaders.of(app)
        RerankRoutes(targets, Backend(Mounts(transport), 30)).register(app)
        client = TestClient(TestServer(app))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def test_jina_dialect_is_relayed_resorted_and_metered(gateway: Make) -> None:
    def backend(sent: Sent) -> Reply:
        assert sent.path == "/v1/rerank"
        # a backend that ignores top_n and answers in index order
        results = [{"index": i, "relevance_score": s} for i, s in enumerate((0.2, 0.9, 0.5))]
        return Reply.json({"results": results, "usage": {"prompt_tokens": 21, "total_tokens": 21}})

    transport = MockTransport(backend)
    client = gateway(transport, [_route("m", "a")], Resilience())
    await client.start_server()
    answer = await client.post("/v2/rerank", json={**BODY, "top_n": 2})
    assert answer.status == 200
    body = await answer.json()
    assert [(r["index"], r["relevance_score"]) for r in body["results"]] == [(1, 0.9), (2, 0.5)]
    assert transport.sent[0].json() == {
        "model": "served-a",
        "query": "q",
        "documents": DOCS,
        "top_n": 3,
        "return_documents": False,
    }
    [ex] = client.app[EXCHANGES]
    assert (ex.operation, ex.prompt_tokens, ex.search_units, ex.usage_estimated) == ("rerank", 21, 1, False)


async def test_tei_dialect_for_a_tgi_connection_and_none_for_ollama(gateway: Make) -> None:
    def backend(sent: Sent) -> Reply:
        assert sent.path == "/rerank"
        return Reply.json(
            [{"index": 2, "score": 0.8}, {"index": 0, "score": 0.3}, {"index": 1, "score": 0.1}]
        )

    transport = MockTransport(backend)
    routes = [_route("tei/m", "a", "tgi"), _route("box/llama", "b", "ollama")]
    client = gateway(transport, routes, Resilience())
    await client.start_server()
    answer = await client.post("/v1/rerank", json={**BODY, "model": "tei/m", "return_documents": True})
    body = await answer.json()
    assert [(r["index"], r["document"]["text"]) for r in body["results"]] == [
        (2, "a bird"),
        (0, "a cat"),
        (1, "a dog"),
    ]
    assert transport.sent[0].json() == {"query": "q", "texts": DOCS, "truncate": True, "return_text": False}
    [ex] = client.app[EXCHANGES]
    assert ex.usage_estimated and ex.prompt_tokens is not None and ex.prompt_tokens > 0  # TEI sent none

    ollama = await client.post("/v2/rerank", json={**BODY, "model": "box/llama"})
    assert ollama.status == 400
    assert (await ollama.json())["error"]["message"].endswith("ollama servers have no rerank API")
    assert len(transport.sent) == 1  # not asked


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        (501, {"error": {"code": 501, "message": "This server does not support reranking.", "type": "x"}}),
        (404, {"detail": "Not Found"}),
        (424, {"error": "model is not a re-ranker model", "error_type": "backend"}),
        (400, {"error": {"message": "model 'm' serves chat, not rerank", "code": "wrong_task"}}),
    ],
)
async def test_a_backend_without_rerank_is_a_400_and_no_breaker_failure(
    gateway: Make, status: int, answer: Any
) -> None:
    resilience = Resilience()
    client = gateway(MockTransport(lambda sent: Reply.json(answer, status)), [_route("m", "a")], resilience)
    await client.start_server()
    for _ in range(resilience.guard.breakers.failures + 2):
        refused = await client.post("/v2/rerank", json=BODY)
        assert refused.status == 400
        error = (await refused.json())["error"]
        assert error["code"] == "unsupported_operation" and error["param"] == "model"
        assert error["message"].startswith("model 'm' cannot rerank")
    assert resilience.guard.breakers.states() == {}


async def test_other_errors_keep_their_status_and_5xx_falls_back(gateway: Make) -> None:
    def backend(sent: Sent) -> Reply:
        if sent.base_url == "http://a":
            return Reply.json({"error": {"message": "overloaded"}}, 500)
        if sent.base_url == "http://b":
            return Reply.json({"results": [{"index": 0, "relevance_score": 1.0}]})
        return Reply.json({"error": "Tokenization error", "error_type": "tokenizer"}, 422)

    resilience = Resilience(fallback_names=parse_fallbacks("m=n"))
    routes = [_route("m", "a"), _route("n", "b"), _route("t", "c", "tgi")]
    client = gateway(MockTransport(backend), routes, resilience)
    await client.start_server()
    fell = await client.post("/v2/rerank", json={**BODY, "top_n": 1})
    assert fell.status == 200 and fell.headers["X-Superollama-Fallback"] == "n"
    assert [r["index"] for r in (await fell.json())["results"]] == [0]
    bad = await client.post("/v2/rerank", json={**BODY, "model": "t"})
    assert bad.status == 422 and (await bad.json())["error"]["message"] == "Tokenization error"
    garbage = gateway(MockTransport(lambda sent: Reply.json({"ok": True})), [_route("m", "a")], Resilience())
    await garbage.start_server()
    failed = await garbage.post("/v1/rerank", json=BODY)
    assert failed.status == 502 and "no rerank results" in (await failed.json())["error"]["message"]


# -- runtimes ---------------------------------------------------------------------------------------------


def test_cross_encoders_are_recognised(tmp_path: Path) -> None:
    classifier = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}}
    assert is_cross_encoder(classifier)
    assert is_cross_encoder({"architectures": ["XLMRobertaForSequenceClassification"], "num_labels": 1})
    assert not is_cross_encoder({"architectures": ["BertForSequenceClassification"]})  # 2 labels
    assert not is_cross_encoder({"architectures": ["LlamaForCausalLM"], "num_labels": 1})
    (tmp_path / "config.json").write_text(json.dumps(classifier))
    assert detect_task(tmp_path) == "rerank"

    assert is_reranker({"architecture": "bert", "model_info": {"bert.classifier.output_labels": ["L0"]}})
    assert is_reranker({"architecture": "qwen3", "model_info": {"qwen3.pooling_type": 4}})
    assert not is_reranker({"architecture": "bert", "model_info": {"bert.pooling_type": 2}})
    assert not is_reranker({"architecture": "llama", "model_info": {}})

    runtime = LlamaCppRuntime(tmp_path)

    def command(metadata: dict[str, Any], **options: Any) -> tuple[str, ...]:
        artifact = Artifact("x:1", "gguf", tmp_path / "x.gguf", metadata)
        return runtime.command(InstanceSpec("i", "x:1", artifact, "llamacpp", options=options))

    labels = {"architecture": "bert", "model_info": {"bert.classifier.output_labels": ["L0"]}}
    assert "--reranking" in command(labels)
    assert "--reranking" not in command({}) and "--reranking" not in command(labels, reranking=False)


class FakeReranker:
    task = "rerank"

    def __init__(self) -> None:
        self.asked: list[tuple[str, tuple[str, ...], int | None]] = []

    def score(self, query: str, documents: Sequence[str], max_tokens: int | None = None) -> Any:
        self.asked.append((query, tuple(documents), max_tokens))
        return [len(d) / 10 for d in documents], 7 * len(documents)


async def test_the_worker_reranks_in_vllms_shape_and_refuses_other_tasks() -> None:
    engine = FakeReranker()
    async with TestClient(TestServer(Worker(engine, "tiny", 4).app())) as client:
        answer = await client.post(
            "/v1/rerank",
            json={
                "query": "q",
                "documents": ["bb", {"text": "cccc"}, "a"],
                "top_n": 2,
                "return_documents": True,
            },
        )
        body = await answer.json()
        assert answer.status == 200, body
        assert (body["model"], body["usage"], body["object"]) == (
            "tiny",
            {"prompt_tokens": 21, "total_tokens": 21},
            "list",
        )
        assert [(r["index"], r["document"]["text"]) for r in body["results"]] == [(1, "cccc"), (0, "bb")]
        bad = await client.post("/v1/rerank", json={"query": "q", "documents": []})
        assert bad.status == 400 and (await bad.json())["error"]["param"] == "documents"
        chat = await client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
        )
        assert chat.status == 400 and (await chat.json())["error"]["code"] == "wrong_task"


async def test_a_reranker_is_warmed_up_through_rerank() -> None:
    """A swap warms a new instance with one real request: a cross-encoder only answers /v1/rerank."""
    asked: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        asked.append(request.path)
        if request.path != "/v1/rerank":
            return web.json_response(
                {"error": {"message": "serves rerank", "code": "wrong_task"}}, status=400
            )
        return web.json_response({"results": [{"index": 0, "relevance_score": 0.5}]})

    app = web.Application()
    app.router.add_post("/{path:.*}", answer)
    async with TestServer(app) as server:
        endpoint = Endpoint(str(server.make_url("")).rstrip("/"), "openai", "tiny")
        await http_warmup(endpoint, timeout=10)
        assert asked == ["/v1/chat/completions", "/v1/embeddings", "/v1/rerank"]
        elsewhere = Endpoint(endpoint.base_url + "/nothing", "openai", "tiny")
        with pytest.raises(ModelLoadFailed):
            await http_warmup(elsewhere, timeout=10)
