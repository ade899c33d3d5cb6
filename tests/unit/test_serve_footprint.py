"""What ``superollama serve`` keeps out of its memory until something asks for it: the other CLI commands
(and rich, and the admin client), jsonschema (the first admin body), SQLAlchemy's Postgres dialect (a
Postgres registry) and its ORM (never), pynvml (an NVIDIA driver), the OpenAPI document (the first
``/openapi.json``), pydantic and the pydantic models of the Anthropic and Responses APIs (their first
request).

Each check runs in a fresh interpreter that goes the way ``serve`` goes: the CLI's ``main``, the ``serve``
command, and ``create_app`` on a temporary home (``superollama.app.serve`` is replaced by a stand-in that
builds the app without binding a socket, lists what is imported, and closes the app). A module here that
an eager import brings back fails the test; no memory numbers are asserted (bench/idle.py measures them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from superollama.agent.inventory import NVIDIA_DRIVER_PATHS
from superollama.cli.main import COMMANDS

ROOT = Path(__file__).resolve().parents[2]

SERVE = """
import asyncio, json, sys
import superollama.app

def build_and_report(settings, worker=None):
    async def build():
        app = await superollama.app.create_app(settings, worker)
        routes = app.router.routes()
        [openapi] = [r for r in routes if r.method == "GET" and r.resource.canonical == "/openapi.json"]
        try:
            return {
                "modules": sorted(sys.modules),
                "lazy": sorted(n for n, m in sys.modules.items() if type(m).__name__ == "_LazyModule"),
                "openapi_rendered": openapi.handler.__self__._rendered is not None,
            }
        finally:
            app.freeze()
            await app.cleanup()

    print("REPORT " + json.dumps(asyncio.run(build())))

superollama.app.serve = build_and_report
sys.argv = ["superollama", "--home", sys.argv[1], "serve", "--workers", "1", "--port", "0"]
from superollama.cli.main import main
main()
"""

COMMAND_HELP = """
import json, sys
sys.argv = ["superollama", *sys.argv[1:]]
from superollama.cli.main import main
try:
    main()
except SystemExit:
    pass
print("REPORT " + json.dumps(sorted(sys.modules)))
"""


def _child(code: str, *args: str, home: Path) -> dict[str, object] | list[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "SUPEROLLAMA_HOME": str(home),
        "SUPEROLLAMA_BUNDLED_MODEL": "false",  # a copy of the model file is not what is under test
    }
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    reports = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert reports, f"no report (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    loaded: dict[str, object] | list[str] = json.loads(reports[-1].removeprefix("REPORT "))
    return loaded


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    home = tmp_path_factory.mktemp("serve") / "home"
    report = _child(SERVE, str(home), home=home)
    assert isinstance(report, dict)
    return report


def _modules(report: dict[str, object]) -> set[str]:
    modules = report["modules"]
    assert isinstance(modules, list)
    return set(modules)


def _loaded(modules: set[str], package: str) -> list[str]:
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


def test_serve_builds_the_app(served: dict[str, object]) -> None:
    modules = _modules(served)
    assert "superollama.app" in modules and "superollama.gateway.relay" in modules  # it did build


def test_serve_loads_no_other_cli_command_nor_the_client(served: dict[str, object]) -> None:
    modules = _modules(served)
    others = sorted({f"superollama.cli.{m}" for m in COMMANDS.values()} & modules)
    assert not others, f"serve imported the modules of other commands: {others}"
    assert not _loaded(modules, "superollama.cli.render")
    assert not _loaded(modules, "rich"), "rich is the client commands' output"
    assert not _loaded(modules, "superollama.client"), "the admin API's client is the commands'"


def test_serve_loads_no_jsonschema_until_an_admin_body(served: dict[str, object]) -> None:
    modules = _modules(served)
    assert not _loaded(modules, "jsonschema")
    assert not _loaded(modules, "referencing")


def test_a_sqlite_registry_loads_no_postgres_dialect(served: dict[str, object]) -> None:
    assert not _loaded(_modules(served), "sqlalchemy.dialects.postgresql")


def test_the_registry_loads_no_orm(served: dict[str, object]) -> None:
    """The registry is SQLAlchemy Core on its own async engine (``registry/engine.py``):
    ``sqlalchemy.ext.asyncio`` would bring the ORM with it, about 6 MB."""
    modules = _modules(served)
    assert not _loaded(modules, "sqlalchemy.orm")
    assert not _loaded(modules, "sqlalchemy.ext.asyncio")


def test_the_anthropic_and_responses_models_wait_for_their_first_request(served: dict[str, object]) -> None:
    """Their modules are imported lazily (``core/lazy.py``): in ``sys.modules``, their code not run."""
    modules, lazy = _modules(served), served["lazy"]
    assert isinstance(lazy, list)
    for name in ("superollama.wire.anthropic", "superollama.wire.responses"):
        assert name not in modules or name in lazy, f"{name} was loaded at start"


def test_pydantic_waits_for_the_first_request_that_needs_it(served: dict[str, object]) -> None:
    """The settings are checked without pydantic (``settings/fields.py``): pydantic and its compiled core
    were about 9 MB of the idle server, and only the Anthropic and Responses APIs' request models use them."""
    modules = _modules(served)
    for package in ("pydantic", "pydantic_core", "pydantic_settings"):
        assert not _loaded(modules, package), f"{package} was loaded at start"


def test_pynvml_is_loaded_only_where_an_nvidia_driver_shows(served: dict[str, object]) -> None:
    if any(os.path.exists(p) for p in NVIDIA_DRIVER_PATHS):
        pytest.skip("this machine has an NVIDIA driver: NVML is what answers its GPUs")
    assert not _loaded(_modules(served), "pynvml")


def test_the_openapi_document_is_not_rendered_at_start(served: dict[str, object]) -> None:
    assert served["openapi_rendered"] is False


def test_a_command_loads_its_own_module_only(tmp_path: Path) -> None:
    modules = _child(COMMAND_HELP, "keys", "--help", home=tmp_path / "home")
    assert isinstance(modules, list)
    loaded = {m for m in modules if m.startswith("superollama.cli.")}
    assert loaded == {"superollama.cli.main", "superollama.cli.keys", "superollama.cli.render"}
