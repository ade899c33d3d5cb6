"""Model scope on every route of both client APIs, who may read ``/metrics``, and the metrics' label values —
against a real ``superollama serve``: one worker on SQLite, and ``--workers 2`` on Postgres (every check
made through both workers; which one answered is in ``x-superollama-worker``).

The server has two versions of SmolLM2 (``smollm2:135m`` and a copy, ``secret-model:1``) and a connection
(``echo``, an OpenAI-compatible stand-in serving ``echo-1``). A key limited to ``smollm2:135m`` must get,
for a model outside its scope, exactly the answer it gets for a model that does not exist: same status,
same body once the name is swapped out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import PG_URL
from tests.databases import postgres_schema_sync, schema_url
from tests.e2e.conftest import ServerProcess
from tests.e2e.standins import StandIn

MODEL = "smollm2:135m"
SECRET = "secret-model:1"
WORKER = "x-superollama-worker"
HI = [{"role": "user", "content": "Hi"}]
# (a model outside the key's scope, a model nobody has): each pair must be answered alike
PAIRS = (
    (SECRET, "absent-model:1"),
    ("SECRET-Model:1", "ABSENT-Model:1"),  # any spelling resolves the same way
    ("echo/echo-1", "echo/ghost-1"),  # a connection's model
    ("retired:1", "absent-model:1"),  # a disabled one: not "is disabled", missing
)
UNKNOWN, OTHER = "_unknown", "_other"
ROOT = Path(__file__).parents[2]


@dataclass
class Scoped:
    server: ServerProcess
    workers: int
    admin: str
    user: str  # limited to smollm2:135m
    prom: str  # the metrics role

    def clients(self, key: str | None) -> Iterator[tuple[str, httpx.Client]]:
        """One client per worker, each on a keep-alive connection that worker took."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        for worker in range(self.workers):
            client = _pin(self.server.url, worker, headers) if self.workers > 1 else _client(self.server.url)
            client.headers.update(headers)
            try:
                yield str(worker), client
            finally:
                client.close()


def _client(url: str) -> httpx.Client:
    return httpx.Client(
        base_url=url, timeout=120, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)
    )


def _pin(url: str, worker: int, headers: dict[str, str]) -> httpx.Client:
    for _ in range(400):
        client = _client(url)
        if client.get("/health").headers[WORKER] == str(worker):
            return client
        client.close()
    raise AssertionError(f"no connection reached worker {worker} in 400 tries")


def _cli(server: ServerProcess, key: str | None, *args: str) -> str:
    done = server.cli(*(["--api-key", key] if key else []), *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(
    scope="module",
    params=[pytest.param(1, id="1-worker-sqlite"), pytest.param(2, id="2-workers-postgres")],
)
def scoped(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scoped]:
    workers = int(request.param)
    with contextlib.ExitStack() as stack:
        env = {"SUPEROLLAMA_WORKERS": str(workers)}
        if workers > 1:
            schema = stack.enter_context(postgres_schema_sync(PG_URL, "test_scope"))
            env["SUPEROLLAMA_REGISTRY_URL"] = schema_url(PG_URL, schema)
        stand_in = StandIn().start()
        stack.callback(stand_in.stop)
        server = ServerProcess(tmp_path_factory.mktemp("scope"), **env)
        stack.callback(server.stop)
        server.start(timeout=120)
        # no key yet: /metrics is open on loopback, as the data plane is
        assert httpx.get(server.url + "/metrics", timeout=30).status_code == 200
        admin = _cli(server, None, "keys", "create", "--name", "ops", "--role", "admin")
        _cli(server, admin, "cp", MODEL, SECRET)
        _cli(server, admin, "cp", MODEL, "retired:1")
        _cli(server, admin, "disable", "retired:1")
        _cli(server, admin, "connect", "openai", f"http://127.0.0.1:{stand_in.port}/v1", "--name", "echo")
        user = _cli(server, admin, "keys", "create", "--name", "app", "--models", MODEL)
        prom = _cli(server, admin, "keys", "create", "--name", "prom", "--role", "metrics")
        yield Scoped(server, workers, admin, user, prom)


def _routes(name: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every route of both client APIs that takes a model name, with ``name`` in it."""
    return [
        ("POST", "/v1/chat/completions", {"model": name, "messages": HI, "max_tokens": 2}),
        ("POST", "/v1/chat/completions", {"model": name, "messages": HI, "stream": True}),
        ("POST", "/v1/completions", {"model": name, "prompt": "Hi", "max_tokens": 2}),
        ("POST", "/v1/embeddings", {"model": name, "input": "Hi"}),
        ("POST", "/v1/rerank", {"model": name, "query": "Hi", "documents": ["a", "b"]}),
        ("POST", "/v2/rerank", {"model": name, "query": "Hi", "documents": ["a", "b"]}),
        ("GET", f"/v1/models/{name}", None),
        ("POST", "/api/chat", {"model": name, "messages": HI, "stream": False}),
        ("POST", "/api/chat", {"model": name, "messages": HI}),
        ("POST", "/api/chat", {"model": name, "messages": []}),  # load only
        ("POST", "/api/generate", {"model": name, "prompt": "Hi", "stream": False}),
        ("POST", "/api/generate", {"model": name}),  # load only
        ("POST", "/api/generate", {"model": name, "keep_alive": 0}),  # unload
        ("POST", "/api/embed", {"model": name, "input": "Hi"}),
        ("POST", "/api/embeddings", {"model": name, "prompt": "Hi"}),
        ("POST", "/api/show", {"model": name}),
        ("POST", "/api/show", {"name": name}),  # the older field
        ("POST", "/api/pull", {"model": name, "stream": False}),
        ("POST", "/api/copy", {"source": name, "destination": "stolen:1"}),
        ("POST", "/api/copy", {"source": MODEL, "destination": name}),
        ("DELETE", "/api/delete", {"model": name}),
    ]


def _answer(client: httpx.Client, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
    return client.request(method, path, json=body) if body is not None else client.request(method, path)


def _without(response: httpx.Response, name: str) -> tuple[int, str, bytes]:
    return (
        response.status_code,
        response.headers["Content-Type"],
        response.content.replace(name.encode(), b"@"),
    )


def test_a_model_outside_the_scope_is_answered_as_missing_on_every_route(scoped: Scoped) -> None:
    for worker, client in scoped.clients(scoped.user):
        for hidden, absent in PAIRS:
            for (method, path, body), (_, other_path, other_body) in zip(
                _routes(hidden), _routes(absent), strict=True
            ):
                seen = _answer(client, method, path, body)
                missing = _answer(client, method, other_path, other_body)
                assert seen.status_code in (403, 404), (worker, path, body, seen.text)
                assert _without(seen, hidden) == _without(missing, absent), (worker, path, body)
                if scoped.workers > 1:
                    assert seen.headers[WORKER] == worker
        # the same key on its own model, in any spelling: routed, answered
        for spelling in (MODEL, "sMollm2:135m", "  smollm2:135m"):
            chat = client.post(
                "/v1/chat/completions", json={"model": spelling, "messages": HI, "max_tokens": 1}
            )
            assert chat.status_code == 200, (worker, spelling, chat.text)
        assert client.post("/api/show", json={"model": MODEL}).status_code == 200


def test_listings_show_only_the_models_in_scope(scoped: Scoped) -> None:
    admin = {"Authorization": f"Bearer {scoped.admin}"}
    loaded = httpx.post(
        scoped.server.url + "/api/generate", json={"model": SECRET}, headers=admin, timeout=120
    )
    assert loaded.status_code == 200, loaded.text
    as_admin = httpx.get(scoped.server.url + "/api/ps", headers=admin, timeout=30).json()
    assert SECRET in {m["name"] for m in as_admin["models"]}
    for worker, client in scoped.clients(scoped.user):
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [MODEL], worker
        assert [m["name"] for m in client.get("/api/tags").json()["models"]] == [MODEL], worker
        assert SECRET not in {m["name"] for m in client.get("/api/ps").json()["models"]}, worker


def test_the_official_clients_cannot_tell_a_hidden_model_from_a_missing_one(scoped: Scoped) -> None:
    url = scoped.server.url
    client = openai.OpenAI(base_url=url + "/v1", api_key=scoped.user, max_retries=0)
    local = ollama.Client(host=url, headers={"Authorization": f"Bearer {scoped.user}"}, timeout=60)
    for hidden, absent in PAIRS:
        answers: list[tuple[Any, ...]] = []
        for name in (hidden, absent):
            with pytest.raises(openai.NotFoundError) as chat:
                client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}])
            with pytest.raises(openai.NotFoundError) as retrieved:
                client.models.retrieve(name)
            with pytest.raises(ollama.ResponseError) as shown:
                local.show(name)
            with pytest.raises(ollama.ResponseError) as chatted:
                local.chat(model=name, messages=[{"role": "user", "content": "Hi"}])
            answers.append(
                (
                    str(chat.value.body).replace(name, "@"),
                    str(retrieved.value.body).replace(name, "@"),
                    shown.value.status_code,
                    shown.value.error.replace(name, "@"),
                    chatted.value.status_code,
                    chatted.value.error.replace(name, "@"),
                )
            )
        assert answers[0] == answers[1], answers
        assert answers[0][2] == answers[0][4] == 404


def test_metrics_need_the_admin_or_the_metrics_role(scoped: Scoped) -> None:
    for worker, client in scoped.clients(None):
        anonymous = client.get("/metrics")
        assert anonymous.status_code == 401, (worker, anonymous.text)
        assert anonymous.json()["error"]["code"] == "invalid_api_key"
        for spelling in ("/metrics?x=1", "/%6Detrics", "/metrics/"):
            assert client.get(spelling).status_code in (401, 404), (worker, spelling)
        user = client.get("/metrics", headers={"Authorization": f"Bearer {scoped.user}"})
        assert user.status_code == 403 and "metrics role" in user.json()["error"]["message"], user.text
        for key in (scoped.prom, scoped.admin):
            scrape = client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
            assert scrape.status_code == 200, (worker, scrape.text)
            assert any(f.name == "superollama_requests" for f in text_string_to_metric_families(scrape.text))
    # a metrics key reads /metrics and nothing else
    for worker, client in scoped.clients(scoped.prom):
        for method, path, body in (
            ("GET", "/v1/models", None),
            ("POST", "/v1/chat/completions", {"model": MODEL, "messages": HI}),
            ("GET", "/api/tags", None),
            ("POST", "/api/show", {"model": MODEL}),
            ("POST", "/api/chat", {"model": MODEL, "messages": HI, "stream": False}),
            ("GET", "/api/version", None),
            ("GET", "/admin/v1/models", None),
            ("GET", "/admin/v1/keys", None),
        ):
            refused = _answer(client, method, path, body)
            assert refused.status_code == 403, (worker, path, refused.text)
    # the CLI's own check of the new role
    done = scoped.server.cli("--api-key", scoped.prom, "ls")
    assert done.returncode != 0


def test_the_prometheus_example_scrapes_every_worker_with_a_metrics_key(
    scoped: Scoped, tmp_path: Path
) -> None:
    """deploy/prometheus/prometheus.yml followed as Prometheus does: the key file ``keys create`` wrote,
    sent as ``Authorization: TYPE CREDENTIALS`` (trimmed) to the job's ``metrics_path``."""
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "superollama")
    auth = job["authorization"]
    assert auth["credentials_file"] and job["metrics_path"] == "/metrics"
    key_file = tmp_path / Path(auth["credentials_file"]).name
    created = scoped.server.cli(
        "--api-key", scoped.admin, "keys", "create", "--name", "prometheus", "--role", "metrics"
    )
    assert created.returncode == 0, created.stderr
    key_file.write_text(created.stdout)  # what `> FILE` leaves: the key alone, and a newline
    header = f"{auth.get('type', 'Bearer')} {key_file.read_text().strip()}"
    for worker, client in scoped.clients(None):
        scrape = client.get(job["metrics_path"], headers={"Authorization": header})
        assert scrape.status_code == 200, (worker, scrape.text)
        assert "superollama_requests_total" in scrape.text


def _series(scoped: Scoped) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    scrape = httpx.get(
        scoped.server.url + "/metrics", headers={"Authorization": f"Bearer {scoped.prom}"}, timeout=30
    )
    assert scrape.status_code == 200, scrape.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(scrape.text)
        for s in family.samples
    }


def _refusals(scoped: Scoped, tag: str) -> None:
    """Requests that reach no model, each kind on both APIs and every worker, with names made from ``tag``."""
    names = (
        f"bogus-{tag}:1",
        f"BoGuS-{tag}",
        f"  {SECRET.upper()}{tag}",
        f"{SECRET}-{tag}",
        f"!!{tag}",
        f"a/b/c/d/{tag}",
        "x" * 90 + tag,
        f"echo/{tag}",
    )
    for key, tried in ((scoped.user, (*names, SECRET)), (scoped.admin, names)):
        for _, client in scoped.clients(key):
            for name in tried:
                client.post("/v1/chat/completions", json={"model": name, "messages": HI, "max_tokens": 1})
                client.post("/v1/embeddings", json={"model": name, "input": "Hi"})
                client.post("/api/chat", json={"model": name, "messages": HI, "stream": False})
                client.post("/api/generate", json={"model": name, "prompt": "Hi", "stream": False})
                client.post("/api/show", json={"model": name})
                client.get(f"/v1/models/{name}")
    for _, client in scoped.clients(None):  # no key, and the metrics key, on the data plane
        for name in names:
            client.post("/v1/chat/completions", json={"model": name, "messages": HI})
            client.post("/api/chat", json={"model": name, "messages": HI}, headers={"x-api-key": scoped.prom})


def test_metric_labels_are_canonical_names_of_known_models(scoped: Scoped) -> None:
    for _, client in scoped.clients(scoped.user):  # routed under other spellings: counted canonically
        for spelling in ("sMollm2:135m", "  smollm2:135m", "SMOLLM2:135M"):
            answer = client.post(
                "/v1/chat/completions", json={"model": spelling, "messages": HI, "max_tokens": 1}
            )
            assert answer.status_code == 200, answer.text
    _refusals(scoped, "warm")
    before = _series(scoped)
    for round_ in range(3):
        _refusals(scoped, f"r{round_}")
    after = _series(scoped)

    def model_series(series: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> set[Any]:
        return {key for key in series if any(label == "model" for label, _ in key[1])}

    assert model_series(after) == model_series(before)  # many new names, not one new series
    requests = {
        dict(labels)["model"]: value
        for (name, labels), value in after.items()
        if name == "superollama_requests_total" and dict(labels)["status"] == "404"
    }
    assert requests[UNKNOWN] > 0 and set(requests) == {UNKNOWN}  # every refusal counted, as one value
    grew = (
        after[
            (
                "superollama_requests_total",
                frozenset({("model", UNKNOWN), ("status", "404"), ("protocol", "openai")}),
            )
        ]
        - before[
            (
                "superollama_requests_total",
                frozenset({("model", UNKNOWN), ("status", "404"), ("protocol", "openai")}),
            )
        ]
    )
    assert grew > 0
    labels = {dict(key[1])["model"] for key in model_series(after)}
    assert labels <= {MODEL, SECRET, "echo/echo-1", UNKNOWN, OTHER}, labels
    assert MODEL in labels and not {"sMollm2:135m", "  smollm2:135m", "SMOLLM2:135M"} & labels
    refused = [
        key
        for key in after
        if dict(key[1]).get("model") == SECRET and dict(key[1]).get("status") in ("403", "404")
    ]
    assert refused == []  # the scoped key's attempts on secret-model:1 name no model
