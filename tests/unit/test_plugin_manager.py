"""The plugin manager: hook order, a plugin's failures kept to itself, first registration wins, the runtime
chosen by ``accepts`` and the node's inventory, and the gateway seam (``hooks_middleware`` + ``read_json``)
run in-process on loopback."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict, CIMultiDictProxy

from superollama.agent.choice import RuntimeChoice
from superollama.core import Artifact, Runtime
from superollama.errors import InvalidRequest, ModelLoadFailed, SuperOllamaError
from superollama.gateway import error_middleware, read_json
from superollama.gateway.hooks import HookRequest, HookResponse, hooks_middleware
from superollama.plugins import ENTRY_POINT_GROUP, Plugins, hookimpl, load_plugins, plugin_middlewares
from superollama.runtimes import LlamaCppRuntime, TransformersRuntime, VllmRuntime
from superollama.settings import Settings


def request(body: dict[str, Any] | None = None) -> HookRequest:
    return HookRequest(
        protocol="openai",
        path="/v1/chat/completions",
        body=body if body is not None else {"seen": []},
        model="m",
        key_id=None,
        request_id="r1",
        headers=CIMultiDictProxy(CIMultiDict()),
    )


def marker(name: str, **opts: bool) -> object:
    """A plugin whose ``before_request`` appends ``name`` to the body's ``seen`` list."""

    class Plugin:
        @hookimpl(**opts)
        def before_request(self, request: HookRequest) -> None:
            request.body["seen"].append(name)

    return Plugin()


def test_request_hooks_run_last_registered_first_with_tryfirst_and_trylast() -> None:
    plugins = Plugins()
    for name, opts in (("a", {}), ("c", {"tryfirst": True}), ("b", {}), ("d", {"trylast": True})):
        assert plugins.add(marker(name, **opts), name, "1")
    hooks = plugins.request_hooks()
    assert hooks is not None
    req = request()
    hooks.before(req)
    assert req.body["seen"] == ["c", "b", "a", "d"]
    assert hooks.order["before_request"] == ["c", "b", "a", "d"] and hooks.order["after_response"] == []


def test_a_rejection_stops_the_chain_and_a_bug_is_a_500_naming_the_plugin() -> None:
    class Refuses:
        @hookimpl
        def before_request(self, request: HookRequest) -> None:
            raise InvalidRequest("not today")

    class Buggy:
        @hookimpl
        def after_response(self, response: HookResponse) -> None:  # a subset of the arguments
            raise KeyError("oops")

    plugins = Plugins()
    plugins.add(marker("later"), "later", "1")
    plugins.add(Refuses(), "refuses", "1")
    plugins.add(Buggy(), "buggy", "1")
    hooks = plugins.request_hooks()
    assert hooks is not None
    req = request()
    with pytest.raises(InvalidRequest, match="not today"):
        hooks.before(req)
    assert req.body["seen"] == []  # registered before the refusal: called after it, so never
    with pytest.raises(SuperOllamaError) as caught:
        hooks.after(req, HookResponse(200, {}, streamed=False))
    assert caught.value.status == 500 and "'buggy'" in caught.value.message
    assert isinstance(caught.value.__cause__, KeyError)


def test_after_response_changes_the_answer_in_place() -> None:
    class Redacts:
        @hookimpl
        def after_response(self, request: HookRequest, response: HookResponse) -> None:
            response.body["text"] = response.body["text"].replace("secret", "[x]")

    plugins = Plugins()
    plugins.add(Redacts(), "redacts", "1")
    hooks = plugins.request_hooks()
    assert hooks is not None
    seen = HookResponse(200, {"text": "a secret"}, streamed=False)
    hooks.after(request(), seen)
    assert seen.body == {"text": "a [x]"}


def test_no_request_hook_no_middleware() -> None:
    plugins = load_plugins(entry_points=())
    assert plugins.request_hooks() is None and plugin_middlewares(plugins) == []


def test_bad_plugins_are_reported_and_left_out(tmp_path: Path) -> None:
    class Unknown:
        @hookimpl
        def register_widgets(self, register: Callable[[object], None]) -> None: ...

    class WrongArguments:
        @hookimpl
        def after_response(self, response: HookResponse) -> None: ...  # fine, but the plugin is not

        @hookimpl
        def before_request(self, request: HookRequest, extra: int) -> None: ...

    plugins = load_plugins(
        entry_points=[
            metadata.EntryPoint("gone", "superollama_no_such_module", ENTRY_POINT_GROUP),
            metadata.EntryPoint("builtin-again", "superollama.plugins.builtin", ENTRY_POINT_GROUP),
        ]
    )
    assert not plugins.add(Unknown(), "unknown", "2")
    assert not plugins.add(WrongArguments(), "wrong", "3")
    report = {p.name: p for p in plugins.report()}
    assert report["gone"].error == "ModuleNotFoundError: No module named 'superollama_no_such_module'"
    assert report["unknown"].error == "unknown hook(s): register_widgets"
    assert report["wrong"].error is not None and "extra" in report["wrong"].error
    assert report["builtin-again"].error == "already loaded as 'superollama.builtin'"
    assert report["superollama.builtin"].error is None
    assert plugins.request_hooks() is None  # no hook of the wrong one is registered, its good one either
    assert list(plugins.runtimes(Settings(home=tmp_path))) == ["vllm", "transformers", "llamacpp"]


class GgufRuntime:
    """A third-party runtime under a built-in's name: it replaces the built-in."""

    name = "llamacpp"
    provider = "openai"

    def accepts(self, artifact: Artifact) -> bool:
        return artifact.format == "gguf"


def test_first_registration_wins_and_a_failing_register_hook_is_reported(tmp_path: Path) -> None:
    class Replaces:
        @hookimpl
        def register_runtimes(self, register: Callable[[object], None]) -> None:
            register(GgufRuntime())

    class Fails:
        @hookimpl
        def register_sources(self, register: Callable[[object], None]) -> None:
            raise RuntimeError("no network")

    plugins = load_plugins(entry_points=())
    plugins.add(Replaces(), "replaces", "1")
    plugins.add(Fails(), "fails", "1")
    runtimes = plugins.runtimes(Settings(home=tmp_path))
    assert isinstance(runtimes["llamacpp"], GgufRuntime) and next(iter(runtimes)) == "llamacpp"
    sources = {s.scheme for s in plugins.sources(Settings(home=tmp_path))}
    assert {"file", "https", "hf", "ollama"} <= sources  # the built-ins still
    assert {p.name: p.error for p in plugins.report()}[
        "fails"
    ] == "register_sources: RuntimeError: no network"


def test_admin_routes_must_be_admin_routes_and_a_failing_command_hook_is_reported() -> None:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response()

    class Outside:
        @hookimpl
        def register_admin_routes(self, register: Callable[..., None]) -> None:
            register("get", "/public", handler)

    class Inside:
        @hookimpl
        def register_admin_routes(self, register: Callable[..., None]) -> None:
            register("get", "/admin/v1/inside", handler)

    class BadCommand:
        @hookimpl
        def register_commands(self, cli: click.Group) -> None:
            raise ValueError("bad command")

    plugins = Plugins()
    for name, plugin in (("outside", Outside()), ("inside", Inside()), ("bad", BadCommand())):
        plugins.add(plugin, name, "1")
    assert plugins.admin_routes() == [("GET", "/admin/v1/inside", handler)]
    plugins.commands(click.Group("superollama"))
    errors = {p.name: p.error for p in plugins.report()}
    assert (
        errors["outside"]
        == "register_admin_routes: ValueError: admin route '/public' must start with /admin/"
    )
    assert errors["bad"] == "register_commands: ValueError: bad command" and errors["inside"] is None


# -- runtime choice ----------------------------------------------------------------------------------
class SuitsGpu(GgufRuntime):
    name = "gpu-gguf"

    async def suits(self, inventory: dict[str, Any]) -> bool:
        return any(d["kind"] == "cuda" for d in inventory["devices"])


def _choice(runtimes: list[Any], devices: list[str]) -> RuntimeChoice:
    inventory = {"devices": [{"name": d, "kind": d.split(":")[0]} for d in devices]}
    by_name: dict[str, Runtime] = {r.name: r for r in runtimes}
    return RuntimeChoice(by_name, "node-1", inventory)


async def test_the_runtime_is_the_first_that_accepts_and_suits_the_node(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    builtin = [VllmRuntime(logs, python=sys.executable), TransformersRuntime(logs), LlamaCppRuntime(logs)]
    folder = tmp_path / "model"
    folder.mkdir()
    gguf = Artifact("m:q4", "gguf", tmp_path / "m.gguf")
    safetensors = Artifact("m:st", "safetensors", folder)
    on_cpu = _choice(builtin, ["cpu"])
    assert await on_cpu.runtime_for(gguf) == "llamacpp"
    assert await on_cpu.runtime_for(safetensors) == "transformers"  # vLLM suits GPU nodes only
    on_gpu = _choice(builtin, ["cpu", "cuda:0"])
    assert await on_gpu.runtime_for(safetensors) == "transformers"  # …with vLLM installed, not here
    assert await _choice([SuitsGpu(), *builtin], ["cpu", "cuda:0"]).runtime_for(gguf) == "gpu-gguf"
    assert await _choice([SuitsGpu(), *builtin], ["cpu"]).runtime_for(gguf) == "llamacpp"
    with pytest.raises(ModelLoadFailed, match="no runtime on node 'node-1' serves the 'onnx' format"):
        await on_cpu.runtime_for(Artifact("m:x", "onnx", tmp_path))
    with pytest.raises(ModelLoadFailed, match=r"gpu-gguf accept its 'gguf' files but cannot run here"):
        await _choice([SuitsGpu()], ["cpu"]).runtime_for(gguf)


# -- the gateway seam --------------------------------------------------------------------------------
class Recorder:
    """``RequestHooks`` that uppercases the prompt and tags the answer."""

    def __init__(self) -> None:
        self.seen: list[HookRequest] = []
        self.answers: list[HookResponse] = []

    def before(self, request: HookRequest) -> None:
        self.seen.append(request)
        if request.body.get("prompt") == "refuse":
            raise InvalidRequest("refused by policy")
        request.body["prompt"] = str(request.body.get("prompt", "")).upper()

    def after(self, request: HookRequest, response: HookResponse) -> None:
        self.answers.append(response)
        if isinstance(response.body, dict):
            response.body["tagged"] = True


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Recorder]]:
    hooks = Recorder()

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"prompt": (await read_json(request))["prompt"]})

    async def stream(request: web.Request) -> web.StreamResponse:
        await read_json(request)
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"data: 1\n\n")
        return response

    app = web.Application(middlewares=[error_middleware, hooks_middleware(hooks)])
    app.router.add_post("/v1/completions", echo)
    app.router.add_post("/api/generate", echo)
    app.router.add_post("/v1/chat/completions", stream)
    app.router.add_post("/admin/v1/copy", echo)
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        yield test_client, hooks


async def test_the_middleware_hands_the_changed_body_to_the_route(
    client: tuple[TestClient[web.Request, web.Application], Recorder],
) -> None:
    http, hooks = client
    resp = await http.post("/v1/completions", json={"model": "m", "prompt": "hi"})
    assert await resp.json() == {"prompt": "HI", "tagged": True}
    assert hooks.seen[-1].protocol == "openai" and hooks.seen[-1].model == "m"
    refused = await http.post("/api/generate", json={"model": "m", "prompt": "refuse"})
    assert (refused.status, await refused.json()) == (400, {"error": "refused by policy"})
    streamed = await http.post("/v1/chat/completions", json={"model": "m", "prompt": "x"})
    assert await streamed.read() == b"data: 1\n\n"
    assert hooks.answers[-1].streamed and hooks.answers[-1].body is None
    other = await http.post("/admin/v1/copy", json={"prompt": "untouched"})
    assert await other.json() == {"prompt": "untouched"} and len(hooks.seen) == 3
    broken = await http.post("/v1/completions", data=b"{not json")
    assert broken.status == 400 and "not valid JSON" in (await broken.json())["error"]["message"]
    assert len(hooks.seen) == 3  # a body that does not parse reaches no hook: the route words the error
