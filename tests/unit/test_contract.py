"""The published contract covers every route the real apps register, and nothing else; admin request
bodies are validated by the same schemas the document publishes."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator

from superollama.app import create_app
from superollama.contract import OPERATIONS, openapi_document, rag, system
from superollama.control import RoutingHolder
from superollama.plugins.rag.files import PURPOSES
from superollama.plugins.rag.service import ENGINES
from superollama.security.shared_limits import SharedLimitTable
from superollama.settings import Settings
from superollama.ui.pages import PAGES
from superollama.workers.context import WorkerContext
from superollama.workers.link import PrimaryLink
from superollama.workers.paths import RunPaths
from superollama.workers.replica import create_replica_app

_PROXY = ("*", "/{tail}")  # a replica's catch-all to the primary: the primary's own routes answer there


def _routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every registered route; HEAD is aiohttp's automatic twin of each GET."""
    out = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        if route.method != "HEAD":
            out.add((route.method, resource.canonical))
    return out


def _mismatch(routes: set[tuple[str, str]], declared: set[tuple[str, str]]) -> str:
    undeclared = sorted(routes - declared)
    unrouted = sorted(declared - routes)
    lines = [f"  registered, not declared: {m} {p}" for m, p in undeclared]
    lines += [f"  declared, not registered: {m} {p}" for m, p in unrouted]
    return "\n".join(lines)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = await create_app(Settings(home=tmp_path / "home", bundled_model=False))
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_every_route_of_the_primary_is_declared_and_every_declaration_routed(
    client: TestClient[web.Request, web.Application],
) -> None:
    declared = {op.key for op in OPERATIONS}
    assert len(declared) == len(OPERATIONS), "an operation is declared twice"
    routes = _routes(client.app)
    problems = _mismatch(routes, declared)
    assert not problems, "the contract and the app disagree:\n" + problems


async def test_every_route_of_a_replica_is_declared(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", bundled_model=False)
    settings.home.mkdir(parents=True)
    with socket.socket() as sock:
        ctx = WorkerContext(
            index=1,
            count=2,
            sock=sock,
            paths=RunPaths.create(settings.home, os.getpid()),
            limits=SharedLimitTable(),
            ready_fd=-1,
            master_pid=os.getpid(),
        )
        link = PrimaryLink(ctx, RoutingHolder(), load_timeout=1)
        app = await create_replica_app(settings, ctx, link)
        try:
            routes = _routes(app)
        finally:
            app.freeze()
            await app.cleanup()
    assert _PROXY in routes, "a replica forwards what it does not serve to the primary"
    problems = _mismatch(routes - {_PROXY}, {op.key for op in OPERATIONS})
    undeclared = [line for line in problems.splitlines() if "not declared" in line]
    assert not undeclared, "the replica serves routes the contract lacks:\n" + "\n".join(undeclared)
    assert ("POST", "/v1/chat/completions") in routes  # it serves the data plane itself


def test_the_document_is_openapi_3_1_with_valid_schemas() -> None:
    doc = openapi_document(OPERATIONS, "0")
    assert doc["openapi"] == "3.1.0"
    count = 0
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            count += 1
            assert op["responses"]["4XX"]["$ref"].endswith("Error"), (method, path)
            for param in op["parameters"]:
                Draft202012Validator.check_schema(param["schema"])
            for reply in op["responses"].values():
                for media in reply.get("content", {}).values():
                    Draft202012Validator.check_schema(media["schema"])
            for media in op.get("requestBody", {}).get("content", {}).values():
                Draft202012Validator.check_schema(media["schema"])
    assert count == len(OPERATIONS)
    refs = {r for r in repr(doc).split("'") if r.startswith("#/components/")}
    for ref in refs:  # every $ref resolves
        _, _, kind, name = ref.split("/")
        assert name in doc["components"][kind], ref


def test_error_envelopes_per_family() -> None:
    doc = openapi_document(OPERATIONS, "0")
    family = {
        "/v1/chat/completions": "OpenaiError",
        "/api/chat": "OllamaError",
        "/v1/messages": "AnthropicError",
        "/v1/responses": "OpenaiError",
        "/admin/v1/keys": "OpenaiError",
    }
    for path, error in family.items():
        assert doc["paths"][path]["post"]["responses"]["4XX"]["$ref"].endswith(error), path
    schemas = doc["components"]["schemas"]
    assert Draft202012Validator(schemas["OllamaError"]).is_valid({"error": "x"})
    assert not Draft202012Validator(schemas["OpenaiError"]).is_valid({"error": "x"})
    anthropic = {"type": "error", "error": {"type": "not_found_error", "message": "x"}}
    assert Draft202012Validator(schemas["AnthropicError"]).is_valid(anthropic)


async def test_admin_bodies_are_validated_by_the_published_schema(
    client: TestClient[web.Request, web.Application],
) -> None:
    bad = await client.post("/admin/v1/keys", json={"name": "k", "rpm": "ten"})
    assert bad.status == 400
    error = (await bad.json())["error"]
    assert error["param"] == "rpm" and "integer" in error["message"], error
    missing = await client.post("/admin/v1/keys", json={"role": "user"})
    assert (await missing.json())["error"]["param"] == "name"
    nested = await client.put("/admin/v1/deployments/d", json={"targets": [{"name": "m", "weight": "heavy"}]})
    assert nested.status == 400
    assert (await nested.json())["error"]["param"] == "targets.0.weight"
    created = await client.post("/admin/v1/keys", json={"name": "ok", "rpm": 10, "models": "a,b"})
    assert created.status == 201, await created.text()
    assert (await created.json())["models"] == ["a", "b"]
    # no body where the body is optional: the handler runs (and says what it needs)
    promote = await client.post("/admin/v1/deployments/nothing/promote")
    assert promote.status == 400
    assert "stage to promote" in (await promote.json())["error"]["message"]


async def test_openapi_json_and_docs_are_served(client: TestClient[web.Request, web.Application]) -> None:
    doc = await (await client.get("/openapi.json")).json()
    assert doc["paths"]["/admin/v1/keys"]["post"]["requestBody"]["required"] is True
    page = await client.get("/docs")
    text = await page.text()
    assert page.status == 200 and page.content_type == "text/html"
    assert "/v1/chat/completions" in text and "<script" not in text and "http" not in text.split("<body>")[0]


async def test_a_form_without_its_multipart_boundary_is_a_400_not_a_crash(
    client: TestClient[web.Request, web.Application],
) -> None:
    """Found by schemathesis: ``request.post()`` raised ValueError, answered 500."""
    headers = {"Content-Type": "multipart/form-data"}
    signin = await client.post("/ui/signin", data=b"key=x", headers=headers)
    assert signin.status == 400
    assert "could not be read" in await signin.text()
    signout = await client.post("/ui/signout", data=b"", headers=headers, allow_redirects=False)
    assert signout.status == 303


def test_an_upload_is_declared_as_multipart_and_its_enums_are_the_servers() -> None:
    doc = openapi_document(OPERATIONS, "0")
    upload = doc["paths"]["/v1/files"]["post"]["requestBody"]
    assert list(upload["content"]) == ["multipart/form-data"]
    form = upload["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file", "purpose"] and form["properties"]["file"]["format"] == "binary"
    assert tuple(form["properties"]["purpose"]["enum"]) == PURPOSES
    assert rag.VECTOR_STORE_ENGINES == ENGINES
    assert tuple(p.slug for p in PAGES) == system.UI_PAGES
    content = doc["paths"]["/v1/files/{id}/content"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["application/octet-stream"]
    # the client APIs' new families answer OpenAI's envelope; rerank reaches a backend (502/503/504)
    for path in ("/v1/rerank", "/v2/rerank", "/v1/vector_stores/{id}/search"):
        responses = doc["paths"][path]["post"]["responses"]
        assert responses["4XX"]["$ref"].endswith("OpenaiError") and "503" in responses, path


async def test_the_new_admin_bodies_are_validated_by_the_published_schema(
    client: TestClient[web.Request, web.Application],
) -> None:
    unknown = await client.post("/admin/v1/webhooks", json={"url": "http://127.0.0.1:9/h", "colour": "red"})
    assert unknown.status == 400
    error = (await unknown.json())["error"]
    assert error["param"] == "colour" and "unknown field 'colour'" in error["message"], error
    short = await client.post("/admin/v1/webhooks", json={"url": "http://127.0.0.1:9/h", "secret": "abc"})
    assert (await short.json())["error"]["param"] == "secret"
    scheme = await client.post("/admin/v1/webhooks", json={"url": "ftp://nowhere"})
    assert scheme.status == 400 and "http or https" in (await scheme.json())["error"]["message"]
    made = await client.post("/admin/v1/webhooks", json={"url": "http://127.0.0.1:9/h", "events": "key.*"})
    assert made.status == 201, await made.text()
    toggled = await client.patch(f"/admin/v1/webhooks/{(await made.json())['id']}", json={"enabled": "no"})
    assert (await toggled.json())["error"]["param"] == "enabled"
    grounding = await client.put("/admin/v1/grounding/m", json={"vector_store_ids": ["vs_x"], "top_k": 99})
    assert grounding.status == 400 and (await grounding.json())["error"]["param"] == "top_k"
    shadow = await client.put("/admin/v1/deployments/d/shadow", json={"to": "m", "percent": 101})
    assert (await shadow.json())["error"]["param"] == "percent"
    rollout = await client.post("/admin/v1/deployments/d/rollout", json={"to": "m", "canary": True})
    assert (await rollout.json())["error"]["param"] == "canary"
    # a rollout's numbers may be text, as the CLI sends them: the handler parses them (no deployment: 404)
    texts = {"to": "m", "canary": "30", "every": "1s", "max_error_rate": "1%", "min_samples": 5}
    assert (await client.post("/admin/v1/deployments/d/rollout", json=texts)).status == 404


async def test_an_upload_with_a_bad_part_header_is_a_400_not_a_crash(
    client: TestClient[web.Request, web.Application],
) -> None:
    """Found by schemathesis: a part header aiohttp cannot parse raised InvalidHeader, answered 500."""
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="}}\u00d4\x10"\r\n\r\nx\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nvision\r\n--{boundary}--\r\n'
    ).encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    bad = await client.post("/v1/files", data=body, headers=headers)
    assert bad.status == 400, await bad.text()
    assert "could not be read" in (await bad.json())["error"]["message"]
    no_boundary = await client.post("/v1/files", data=b"x", headers={"Content-Type": "multipart/form-data"})
    assert no_boundary.status == 400
    form = FormData()
    form.add_field("purpose", "assistants")
    form.add_field("file", b"hello", filename="hi.txt")
    good = await client.post("/v1/files", data=form)
    assert good.status == 200, await good.text()
    assert (await good.json())["filename"] == "hi.txt"
