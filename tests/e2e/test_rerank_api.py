"""Rerank (``/v1/rerank``, ``/v2/rerank``) through a real ``superollama serve``, with httpx and the official
``cohere`` SDK.

No PyPI package ships a reranker, so the model is a tiny cross-encoder the test builds from a config with
random weights (``tests/cross_encoder.py``): it shows the *path* works — the transformers runtime scores
every (query, document) pair exactly as plain transformers does, results come best first, ``top_n`` and
``return_documents`` hold — never the quality of a ranking. The same model converted to GGUF by
llama.cpp's own converter runs in llama.cpp's reranking mode. Connections: Hugging Face
text-embeddings-inference and vLLM stand-ins (``tests/e2e/rerank_standins.py``), the TGI stand-in (which,
like TGI, has no ``/rerank``), each of their protocols as documented.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cohere
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.cross_encoder import build_cross_encoder, convert_to_gguf, reference_scores
from tests.e2e.conftest import ServerProcess, wait_until
from tests.e2e.rerank_standins import TeiStandIn, VllmRerankStandIn, overlap, pair_tokens
from tests.e2e.standins import TgiStandIn
from tests.e2e.test_lifecycle_ops import HubThread

RERANKER = "reranker:tiny"
GGUF = "reranker:gguf"
CHAT = "smollm2:135m"  # the bundled chat model (llama.cpp): it cannot rerank
TEI = f"tei/{TeiStandIn.MODEL_ID}"
VLLM = f"vllm/{VllmRerankStandIn.MODEL_ID}"
QUERY = "Which animals live in Peru?"
DOCS = [
    "The llama is a domesticated camelid of the Andes.",
    "The giant panda lives in the mountains of China.",
    "Python is a programming language.",
    "Guanacos are wild camelids of South America, near Peru.",
    "Which animals live where? A guide to animals of Peru.",
]


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cross_encoder(tmp_path_factory.mktemp("cross-encoder") / "model")


@pytest.fixture(scope="module")
def standins() -> Iterator[tuple[TeiStandIn, VllmRerankStandIn, TgiStandIn]]:
    tei, vllm, tgi = TeiStandIn().start(), VllmRerankStandIn().start(), TgiStandIn().start()
    try:
        yield tei, vllm, tgi
    finally:
        for server in (tei, vllm, tgi):
            server.stop()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    cross_encoder: Path,
    standins: tuple[TeiStandIn, VllmRerankStandIn, TgiStandIn],
) -> Iterator[ServerProcess]:
    tei, vllm, tgi = standins
    files = {str(p.relative_to(cross_encoder)): p for p in sorted(cross_encoder.rglob("*")) if p.is_file()}
    gguf = convert_to_gguf(cross_encoder, cross_encoder.parent / "cross-encoder-f32.gguf")
    with HubThread() as hub:
        hub.add_hf_repo("superollama-tests/tiny-cross-encoder", files)
        home = tmp_path_factory.mktemp("home")
        srv = ServerProcess(home, HF_ENDPOINT=hub.url, SUPEROLLAMA_FALLBACKS=f"{TEI}={VLLM}").start()
        try:
            for args in (
                ("pull", "hf://superollama-tests/tiny-cross-encoder", "--name", RERANKER),
                ("pull", f"file://{gguf}", "--name", GGUF),
                ("connect", "tgi", tei.url, "--name", "tei"),
                ("connect", "openai", vllm.url + "/v1", "--name", "vllm"),
                ("connect", "tgi", tgi.url, "--name", "tgi"),
            ):
                done = srv.cli(*args)
                assert done.returncode == 0, (args, done.stderr)
            yield srv
        finally:
            srv.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def _rows(server: ServerProcess, match: Any, count: int = 1, key: str | None = None) -> list[dict[str, Any]]:
    """The usage ledger's rows that ``match`` picks, once there are ``count`` of them (written in batches
    just after the responses)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    found: list[dict[str, Any]] = []

    def look() -> bool:
        answer = server.admin("GET", "/admin/v1/usage", params={"by": "request"}, headers=headers)
        found[:] = [r for r in answer.json()["rows"] if match(r)]
        return len(found) >= count

    assert wait_until(look, timeout=10)
    assert len(found) == count, found
    return found


def _ranked(answer: dict[str, Any]) -> list[tuple[int, float]]:
    return [(r["index"], r["relevance_score"]) for r in answer["results"]]


def _best_first(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def test_transformers_cross_encoder_scores_sorts_and_cuts(
    server: ServerProcess, http: httpx.Client, cross_encoder: Path
) -> None:
    expected = reference_scores(cross_encoder, QUERY, DOCS)
    order = _best_first(expected)
    assert len({round(s, 4) for s in expected}) == len(DOCS)  # distinct scores: the order is defined

    v2 = http.post("/v2/rerank", json={"model": RERANKER, "query": QUERY, "documents": DOCS, "top_n": 3})
    assert v2.status_code == 200, v2.text
    body = v2.json()
    assert [i for i, _ in _ranked(body)] == order[:3]
    for index, score in _ranked(body):
        assert score == pytest.approx(expected[index], abs=1e-5)
    assert all("document" not in r for r in body["results"])
    assert body["meta"]["api_version"]["version"] == "2"
    assert body["meta"]["billed_units"] == {"search_units": 1}
    tokens = body["meta"]["tokens"]["input_tokens"]
    assert tokens > 0

    # the same request again: the same scores (deterministic); /v1 with {text} documents and the
    # documents returned, every result (no top_n)
    again = http.post("/v2/rerank", json={"model": RERANKER, "query": QUERY, "documents": DOCS, "top_n": 3})
    assert _ranked(again.json()) == _ranked(body)
    v1 = http.post(
        "/v1/rerank",
        json={
            "model": RERANKER,
            "query": QUERY,
            "documents": [{"text": d} for d in DOCS],
            "return_documents": True,
        },
    ).json()
    assert [i for i, _ in _ranked(v1)] == order
    assert [r["document"]["text"] for r in v1["results"]] == [DOCS[i] for i in order]
    assert v1["model"] == RERANKER and v1["usage"]["prompt_tokens"] == tokens
    assert v1["meta"]["api_version"]["version"] == "1"

    assert {i["version"]: i["runtime"] for i in server.instances()}[RERANKER] == "transformers"
    rows = _rows(server, lambda r: r["model"] == RERANKER, count=3)
    assert {(r["operation"], r["search_units"], r["prompt_tokens"], r["status"]) for r in rows} == {
        ("rerank", 1, tokens, 200)
    }
    assert not any(r["usage_estimated"] for r in rows)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(http.get("/metrics").text)
        for s in family.samples
    }
    requests = (("model", RERANKER), ("protocol", "openai"), ("status", "200"))
    assert samples[("superollama_requests_total", requests)] == 3
    assert samples[("superollama_tokens_total", (("model", RERANKER), ("type", "input")))] == 3 * tokens


def test_cohere_sdk_v1_and_v2(server: ServerProcess, cross_encoder: Path) -> None:
    expected = reference_scores(cross_encoder, QUERY, DOCS)
    order = _best_first(expected)
    v2 = cohere.ClientV2(api_key="x", base_url=server.url, timeout=120)
    answer = v2.rerank(model=RERANKER, query=QUERY, documents=DOCS, top_n=2)
    assert [r.index for r in answer.results] == order[:2]
    assert answer.results[0].relevance_score == pytest.approx(expected[order[0]], abs=1e-5)
    assert answer.meta is not None and answer.meta.billed_units is not None
    assert answer.meta.billed_units.search_units == 1

    v1 = cohere.Client(api_key="x", base_url=server.url, timeout=120)
    old = v1.rerank(model=RERANKER, query=QUERY, documents=DOCS, top_n=2, return_documents=True)
    assert [(r.index, r.document.text if r.document else None) for r in old.results] == [
        (i, DOCS[i]) for i in order[:2]
    ]
    with pytest.raises(cohere.BadRequestError) as bad:
        v2.rerank(model=CHAT, query=QUERY, documents=DOCS)
    assert "cannot rerank" in str(bad.value.body)


def test_llamacpp_reranking_mode(server: ServerProcess, http: httpx.Client) -> None:
    first = http.post("/v2/rerank", json={"model": GGUF, "query": QUERY, "documents": DOCS})
    assert first.status_code == 200, first.text
    ranked = _ranked(first.json())
    assert sorted(i for i, _ in ranked) == list(range(len(DOCS)))
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    cut = http.post("/v2/rerank", json={"model": GGUF, "query": QUERY, "documents": DOCS, "top_n": 2})
    assert _ranked(cut.json()) == ranked[:2]  # deterministic, cut after sorting
    assert first.json()["meta"]["tokens"]["input_tokens"] > 0  # llama.cpp's own count
    assert {i["version"]: i["runtime"] for i in server.instances()}[GGUF] == "llamacpp"


def test_models_that_cannot_rerank_and_bad_requests(server: ServerProcess, http: httpx.Client) -> None:
    for _ in range(7):  # more than the 5 failures that open a breaker: a 501 is an answer, not a failure
        refused = http.post("/v2/rerank", json={"model": CHAT, "query": QUERY, "documents": DOCS})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "unsupported_operation"
        assert f"model '{CHAT}' cannot rerank" in error["message"] and error["param"] == "model"
    state = server.admin("GET", "/admin/v1/resilience").json()
    assert state["breakers"]["instances"] == [] and state["breakers"]["opened"] == 0
    chat = http.post(
        "/v1/chat/completions",
        json={"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    )
    assert chat.status_code == 200

    missing = http.post("/v1/rerank", json={"model": "ghost:1", "query": QUERY, "documents": DOCS})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    for body, param in (
        ({"model": RERANKER, "documents": DOCS}, "query"),
        ({"model": RERANKER, "query": " ", "documents": DOCS}, "query"),
        ({"model": RERANKER, "query": QUERY, "documents": []}, "documents"),
        ({"model": RERANKER, "query": QUERY, "documents": [1, 2]}, "documents"),
        ({"model": RERANKER, "query": QUERY, "documents": DOCS, "top_n": -1}, "top_n"),
        ({"model": RERANKER, "query": QUERY, "documents": DOCS, "top_n": "2"}, "top_n"),
        (
            {"model": RERANKER, "query": QUERY, "documents": DOCS, "return_documents": "yes"},
            "return_documents",
        ),
        ({"query": QUERY, "documents": DOCS}, "model"),
    ):
        bad = http.post("/v2/rerank", json=body)
        assert bad.status_code == 400, (body, bad.text)
        assert bad.json()["error"]["param"] == param, body
    garbled = http.post("/v1/rerank", content=b"{not json", headers={"Content-Type": "application/json"})
    assert garbled.status_code == 400 and "not valid JSON" in garbled.json()["error"]["message"]


def test_connections_tei_vllm_and_tgi(
    server: ServerProcess, http: httpx.Client, standins: tuple[TeiStandIn, VllmRerankStandIn, TgiStandIn]
) -> None:
    tei, vllm, tgi = standins
    expected = [overlap(QUERY, d) for d in DOCS]
    order = _best_first(expected)

    answer = http.post("/v2/rerank", json={"model": TEI, "query": QUERY, "documents": DOCS, "top_n": 2})
    assert answer.status_code == 200, answer.text
    assert _ranked(answer.json()) == [(i, expected[i]) for i in order[:2]]
    sent = tei.bodies("POST", "/rerank")[-1]
    assert sent == {"query": QUERY, "texts": DOCS, "truncate": True, "return_text": False}
    tokens = answer.json()["meta"]["tokens"]["input_tokens"]  # TEI's x-compute-tokens header
    assert tokens == sum(pair_tokens(QUERY, d) for d in DOCS)
    [row] = _rows(server, lambda r: r["model"] == TEI)
    assert (row["connection"], row["prompt_tokens"], row["search_units"]) == ("tei", tokens, 1)

    v1 = http.post(
        "/v1/rerank", json={"model": VLLM, "query": QUERY, "documents": DOCS, "return_documents": True}
    )
    assert v1.status_code == 200, v1.text
    assert _ranked(v1.json()) == [(i, expected[i]) for i in order]
    assert [r["document"]["text"] for r in v1.json()["results"]] == [DOCS[i] for i in order]
    assert vllm.bodies("POST", "/v1/rerank")[-1]["model"] == VllmRerankStandIn.MODEL_ID

    # TGI (text generation) has no /rerank: its 404 is a 400 naming the model, not a failure
    no = http.post(
        "/v2/rerank", json={"model": f"tgi/{TgiStandIn.MODEL_ID}", "query": QUERY, "documents": DOCS}
    )
    assert no.status_code == 400 and no.json()["error"]["code"] == "unsupported_operation", no.text
    assert ("POST", "/rerank") in [(m, p) for m, p, _ in tgi.requests]

    # an embedding model in TEI: 424 "not a re-ranker" is a 400 too
    tei.reranker = False
    try:
        refused = http.post("/v2/rerank", json={"model": TEI, "query": QUERY, "documents": DOCS})
    finally:
        tei.reranker = True
    assert refused.status_code == 400 and "not a re-ranker" in refused.json()["error"]["message"]

    # TEI goes away: its model falls back to the vLLM connection's (SUPEROLLAMA_FALLBACKS)
    tei.go_down()
    try:
        fell = http.post("/v2/rerank", json={"model": TEI, "query": QUERY, "documents": DOCS, "top_n": 1})
    finally:
        tei.come_back()
    assert fell.status_code == 200, fell.text
    assert fell.headers["X-Superollama-Fallback"] == VLLM
    assert _ranked(fell.json()) == [(order[0], expected[order[0]])]


def test_rerank_keys_scope_and_rate_limits(server: ServerProcess) -> None:
    """Runs last in the module: the first key turns authentication on."""

    def cli(*args: str) -> str:
        done = server.cli(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    admin = cli("keys", "create", "--name", "ops", "--role", "admin")
    user = cli("--api-key", admin, "keys", "create", "--name", "app", "--models", VLLM, "--rpm", "2")
    body = {"model": VLLM, "query": QUERY, "documents": DOCS}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.post("/v2/rerank", json=body).status_code == 401
        assert client.post("/v1/rerank", json=body).status_code == 401
        auth = {"Authorization": f"Bearer {user}"}
        hidden = client.post("/v2/rerank", json={**body, "model": TEI}, headers=auth)
        absent = client.post("/v2/rerank", json={**body, "model": "ghost:1"}, headers=auth)
        assert hidden.status_code == absent.status_code == 404
        assert hidden.text.replace(TEI, "@") == absent.text.replace("ghost:1", "@")
        statuses = [client.post("/v2/rerank", json=body, headers=auth).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
    [row] = _rows(server, lambda r: r["model"] == VLLM and r["status"] == 429, key=admin)
    assert row["key_prefix"] == user[:11] and row["operation"] == "rerank"
