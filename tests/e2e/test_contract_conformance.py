"""Every operation declared for rerank, files and vector stores, grounding, webhooks, rollouts and shadow,
nodes, plugins and the deployments page, called with real data through a real ``superollama serve``, each
answer checked against the published ``/openapi.json``: its status is declared, its content type is, and
its body fits the declared schema (the family's error envelope for a 4xx).

schemathesis (``test_openapi_fuzz.py``) cannot reach most of these answers: it has no id of a file, vector
store, batch or webhook that exists, so it mostly sees 404s. Here the objects are made first. The vector
store embeds with the bundled SmolLM2 on llama.cpp; rerank answers from a text-embeddings-inference
stand-in (``rerank_standins.py``: no reranker weights can be had here), the bundled chat model's refusal
is checked too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from tests.e2e.conftest import ServerProcess, wait_until
from tests.e2e.rerank_standins import TeiStandIn

MODEL = "smollm2:135m"
COPY = "smollm2:135m-b"
TEI = f"tei/{TeiStandIn.MODEL_ID}"
NOTES = b"The lighthouse keeper is called Ada. She rows to the island every Tuesday with bread.\n"
MORE = b"The moon base grows potatoes under red lamps. Nobody likes them.\n"


class Conformance:
    """Calls the server and checks each answer against the document it publishes."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=120)
        self.doc = self.http.get("/openapi.json").json()
        self.called: set[tuple[str, str]] = set()

    def __call__(
        self, method: str, template: str, status: int | None = None, /, **kwargs: Any
    ) -> httpx.Response:
        path = kwargs.pop("path", {})
        out = self.http.request(method, template.format(**path), **kwargs)
        self.called.add((method, template))
        where = f"{method} {template} answered {out.status_code}: {out.text[:500]}"
        if status is not None:
            assert out.status_code == status, where
        responses = self.doc["paths"][template][method.lower()]["responses"]
        reply = responses.get(str(out.status_code))
        if reply is None and 400 <= out.status_code < 500:
            reply = responses["4XX"]
        assert reply is not None, "undeclared status: " + where
        if "$ref" in reply:
            reply = self.doc["components"]["responses"][reply["$ref"].rsplit("/", 1)[-1]]
        content = reply.get("content", {})
        if not content:
            return out
        media = out.headers.get("content-type", "").split(";")[0]
        assert media in content, f"undeclared content type {media}: {where}"
        if media == "application/json":
            schema = {**content[media]["schema"], "components": self.doc["components"]}
            errors = sorted(Draft202012Validator(schema).iter_errors(out.json()), key=str)
            assert not errors, f"{where}\nviolates the schema: {errors[0].message} at {list(errors[0].path)}"
        return out


@pytest.fixture(scope="module")
def tei() -> Iterator[TeiStandIn]:
    server = TeiStandIn().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Conformance]:
    srv = ServerProcess(tmp_path_factory.mktemp("home"), SUPEROLLAMA_RAG_EMBEDDING_MODEL=MODEL).start()
    try:
        client = Conformance(srv.url)
        yield client
        client.http.close()
    finally:
        srv.stop()


def _upload(api: Conformance, name: str, data: bytes) -> str:
    files = {"file": (name, data, "text/plain")}
    made = api("POST", "/v1/files", 200, files=files, data={"purpose": "assistants"}).json()
    assert (made["filename"], made["bytes"]) == (name, len(data))
    return str(made["id"])


def _store_file(api: Conformance, vs: str, file_id: str) -> dict[str, Any]:
    out = api("GET", "/v1/vector_stores/{id}/files/{file_id}", 200, path={"id": vs, "file_id": file_id})
    return dict(out.json())


def test_files_vector_stores_and_grounding_answer_as_declared(api: Conformance) -> None:
    notes, more = _upload(api, "notes.txt", NOTES), _upload(api, "more.md", MORE)
    listed = api("GET", "/v1/files", 200, params={"purpose": "assistants", "order": "asc", "limit": 1})
    assert listed.json()["has_more"] is True
    api("GET", "/v1/files/{id}", 200, path={"id": notes})
    assert api("GET", "/v1/files/{id}/content", 200, path={"id": notes}).content == NOTES
    api("GET", "/v1/files/{id}", 404, path={"id": "file-nope"})
    bad = api("POST", "/v1/files", 400, files={"file": ("x.txt", b"x")}, data={"purpose": "nope"})
    assert bad.json()["error"]["param"] == "purpose"

    vs = api("POST", "/v1/vector_stores", 200, json={"name": "town", "file_ids": [notes]}).json()["id"]
    assert wait_until(lambda: _store_file(api, vs, notes)["status"] != "in_progress", timeout=120)
    assert _store_file(api, vs, notes)["status"] == "completed", _store_file(api, vs, notes)
    api("GET", "/v1/vector_stores", 200, params={"limit": 5, "order": "asc"})
    api("GET", "/v1/vector_stores/{id}", 200, path={"id": vs})
    changed = {
        "name": "renamed",
        "metadata": {"team": "a"},
        "expires_after": {"anchor": "last_active_at", "days": 7},
    }
    assert (
        api("POST", "/v1/vector_stores/{id}", 200, path={"id": vs}, json=changed).json()["name"] == "renamed"
    )
    api("POST", "/v1/vector_stores/{id}", 400, path={"id": vs}, json={"expires_after": "soon"})

    added = {"file_id": more, "attributes": {"topic": "moon"}}
    api("POST", "/v1/vector_stores/{id}/files", 200, path={"id": vs}, json=added)
    assert wait_until(lambda: _store_file(api, vs, more)["status"] != "in_progress", timeout=120)
    api(
        "GET",
        "/v1/vector_stores/{id}/files",
        200,
        path={"id": vs},
        params={"filter": "completed", "order": "asc"},
    )
    moved = {"attributes": {"topic": "moon", "rank": 2}}
    path = {"id": vs, "file_id": more}
    api("POST", "/v1/vector_stores/{id}/files/{file_id}", 200, path=path, json=moved)
    assert wait_until(lambda: _store_file(api, vs, more)["status"] != "in_progress", timeout=120)

    query = {
        "query": "who rows to the island?",
        "max_num_results": 2,
        "filters": {
            "type": "or",
            "filters": [
                {"type": "eq", "key": "topic", "value": "moon"},
                {"type": "ne", "key": "topic", "value": "x"},
            ],
        },
        "ranking_options": {"score_threshold": 0},
    }
    hits = api("POST", "/v1/vector_stores/{id}/search", 200, path={"id": vs}, json=query).json()["data"]
    assert hits and {h["file_id"] for h in hits} <= {notes, more}
    api(
        "POST",
        "/v1/vector_stores/{id}/search",
        400,
        path={"id": vs},
        json={"query": "x", "max_num_results": 99},
    )

    batch = api(
        "POST", "/v1/vector_stores/{id}/file_batches", 200, path={"id": vs}, json={"file_ids": [notes, more]}
    )
    b = {"id": vs, "batch_id": batch.json()["id"]}
    api("GET", "/v1/vector_stores/{id}/file_batches/{batch_id}", 200, path=b)
    api("GET", "/v1/vector_stores/{id}/file_batches/{batch_id}/files", 200, path=b, params={"order": "desc"})
    api("POST", "/v1/vector_stores/{id}/file_batches/{batch_id}/cancel", 200, path=b)
    api("POST", "/v1/vector_stores/{id}/file_batches", 400, path={"id": vs}, json={})

    grounding = {"vector_store_ids": [vs], "top_k": 2, "score_threshold": None, "template": None}
    g = {"name": MODEL}
    api("PUT", "/admin/v1/grounding/{name}", 200, path=g, json=grounding)
    api("GET", "/admin/v1/grounding", 200)
    api("GET", "/admin/v1/grounding/{name}", 200, path=g)
    api(
        "PUT",
        "/admin/v1/grounding/{name}",
        400,
        path=g,
        json={"vector_store_ids": [vs], "template": "no slot"},
    )
    api("DELETE", "/admin/v1/grounding/{name}", 200, path=g)
    api("GET", "/admin/v1/grounding/{name}", 404, path=g)

    api("DELETE", "/v1/vector_stores/{id}/files/{file_id}", 200, path={"id": vs, "file_id": notes})
    api("DELETE", "/v1/files/{id}", 200, path={"id": more})
    api("DELETE", "/v1/vector_stores/{id}", 200, path={"id": vs})
    api("GET", "/v1/vector_stores/{id}", 404, path={"id": vs})


def test_webhooks_rollouts_shadow_nodes_plugins_and_rerank_answer_as_declared(
    api: Conformance, tei: TeiStandIn
) -> None:
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["key.*"], "description": "nowhere"}
    made = api("POST", "/admin/v1/webhooks", 201, json=hook).json()
    h = {"id": made["id"]}
    api("GET", "/admin/v1/webhooks", 200)
    api("GET", "/admin/v1/webhooks/{id}", 200, path=h)
    rotated = api(
        "PATCH", "/admin/v1/webhooks/{id}", 200, path=h, json={"enabled": False, "rotate_secret": True}
    )
    assert rotated.json()["secret"] != made["secret"]
    pinged = api("POST", "/admin/v1/webhooks/{id}/ping", 200, path=h).json()
    assert pinged["type"] == "webhook.ping" and pinged["status_code"] is None  # nothing listens there
    api("GET", "/admin/v1/webhooks/{id}/deliveries", 200, path=h, params={"limit": 5})
    api("GET", "/admin/v1/webhooks/{id}/deliveries", 400, path=h, params={"state": "lost"})
    api("DELETE", "/admin/v1/webhooks/{id}", 200, path=h)
    api("DELETE", "/admin/v1/webhooks/{id}", 404, path=h)

    nodes = api("GET", "/admin/v1/nodes", 200).json()["nodes"]
    assert any(n["local"] and n["usage"] for n in nodes)
    api("GET", "/admin/v1/plugins", 200)
    api("GET", "/ui/deployments", 200)

    api("POST", "/admin/v1/copy", 201, json={"source": MODEL, "destination": COPY})
    api("PUT", "/admin/v1/deployments/{name}", 200, path={"name": "chat"}, json={"targets": [MODEL]})
    d = {"name": "chat"}
    api("GET", "/admin/v1/deployments/{name}/shadow", 404, path=d)
    api("PUT", "/admin/v1/deployments/{name}/shadow", 200, path=d, json={"to": COPY, "percent": 50})
    shadow = api("GET", "/admin/v1/deployments/{name}/shadow", 200, path=d, params={"last": 3}).json()
    assert shadow["shadow"] == {"target": COPY, "percent": 50}
    api("DELETE", "/admin/v1/deployments/{name}/shadow", 200, path=d)
    policy = {
        "to": COPY,
        "canary": "10",
        "every": "1h",
        "max_error_rate": "1%",
        "max_p95_latency": "+20%",
        "min_samples": 1000,
    }
    api("POST", "/admin/v1/deployments/{name}/rollout", 201, path=d, json=policy)
    api("POST", "/admin/v1/deployments/{name}/rollout", 409, path=d, json=policy)
    assert api("GET", "/admin/v1/deployments/{name}/rollout", 200, path=d).json()["state"] == "running"
    api("POST", "/admin/v1/deployments/{name}/rollout/abort", 200, path=d)
    api("POST", "/admin/v1/deployments/{name}/rollout/abort", 409, path=d)

    api("POST", "/admin/v1/connections", 201, json={"kind": "tgi", "url": tei.url, "name": "tei"})
    models = lambda: [m["id"] for m in api.http.get("/v1/models").json()["data"]]  # noqa: E731
    assert wait_until(lambda: TEI in models(), timeout=30)
    docs = ["a llama in Peru", "a panda in China", {"text": "Peru has llamas"}]
    body = {"model": TEI, "query": "llamas of Peru", "documents": docs, "top_n": 2, "return_documents": True}
    v1 = api("POST", "/v1/rerank", 200, json=body).json()
    assert len(v1["results"]) == 2 and v1["model"] == TEI
    v2 = api("POST", "/v2/rerank", 200, json=body).json()
    assert "usage" not in v2 and v2["results"] == v1["results"]
    refused = api("POST", "/v1/rerank", 400, json={**body, "model": MODEL}).json()
    assert refused["error"]["param"] == "model"
    api("POST", "/v2/rerank", 400, json={**body, "documents": []})


def test_every_new_operation_was_called(api: Conformance) -> None:
    """The two tests above cover every operation this module is about (run after them, in file order)."""
    families = ("rerank", "/v1/files", "vector_stores", "grounding", "webhooks", "rollout", "shadow")
    wanted = {
        (method.upper(), path)
        for path, methods in api.doc["paths"].items()
        for method in methods
        if any(f in path for f in families)
        or path in ("/admin/v1/nodes", "/admin/v1/plugins", "/ui/deployments")
    }
    assert len(wanted) == 42
    assert wanted <= api.called, sorted(wanted - api.called)
