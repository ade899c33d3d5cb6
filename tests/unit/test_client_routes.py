"""Every route of the admin API has a method in ``superollama.Client`` and in ``AsyncClient`` (a new admin
route without one fails here), every method names a route that exists, the synchronous client is the
generated twin of the asynchronous one, and importing the package or the CLI does not import httpx."""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from superollama.app import create_app
from superollama.client import (
    _async_files,
    _async_resources,
    _async_system,
    _sync_files,
    _sync_resources,
    _sync_system,
)
from superollama.contract import OPERATIONS
from superollama.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "/admin/v1/"
# The vector store and file routes the CLI manages: they must have a method too.
MANAGED = ("/v1/files", "/v1/vector_stores")

# Admin routes the client leaves out on purpose, each with why. Keep it short.
NOT_IN_CLIENT: dict[tuple[str, str], str] = {}


ASYNC = (_async_resources, _async_system, _async_files)
SYNC = (_sync_resources, _sync_system, _sync_files)


def _marked(modules: tuple[object, ...]) -> dict[tuple[str, str], list[str]]:
    """(method, path) -> the resource methods marked with it, in the modules of one of the two clients."""
    out: dict[tuple[str, str], list[str]] = {}
    for module in modules:
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != getattr(module, "__name__", None):
                continue
            for name, fn in vars(cls).items():
                key = getattr(fn, "__route__", None)
                if key is not None:
                    out.setdefault(key, []).append(f"{cls_name}.{name}")
    return out


@pytest.fixture
async def registered(tmp_path: Path) -> AsyncIterator[set[tuple[str, str]]]:
    app = await create_app(Settings(home=tmp_path / "home", bundled_model=False))
    async with TestServer(app):
        out = set()
        for route in app.router.routes():
            resource = route.resource
            assert resource is not None
            if route.method != "HEAD":
                out.add((route.method, resource.canonical))
        yield out


def _needs_method(key: tuple[str, str]) -> bool:
    return key[1].startswith(ADMIN) or key[1].startswith(MANAGED)


async def test_every_admin_route_has_a_client_method(registered: set[tuple[str, str]]) -> None:
    declared = {op.key for op in OPERATIONS}
    wanted = {k for k in declared | registered if _needs_method(k)} - set(NOT_IN_CLIENT)
    assert len(wanted) > 60, sorted(wanted)  # the admin API and the files routes, not an empty set
    for client, modules in (("AsyncClient", ASYNC), ("Client", SYNC)):
        marked = _marked(modules)
        missing = sorted(wanted - set(marked))
        assert not missing, f"{client}: routes without a client method: {missing}"
        unknown = sorted(set(marked) - declared - registered)
        assert not unknown, f"{client}: methods of routes that do not exist: {unknown}"
    assert set(NOT_IN_CLIENT) <= declared | registered, "an exclusion names a route that is gone"


def test_the_sync_client_mirrors_the_async_one() -> None:
    a, s = _marked(ASYNC), _marked(SYNC)
    assert {k: [n.removeprefix("Async") for n in v] for k, v in a.items()} == s


def test_the_sync_client_is_generated_from_the_async_one() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "unasync.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_package_and_the_cli_do_not_import_httpx_until_a_client_is_made() -> None:
    code = (
        "import sys, superollama, superollama.cli.main as m\n"
        "import superollama.cli.models, superollama.cli.keys, superollama.cli.rag\n"
        "assert 'httpx' not in sys.modules, 'httpx imported early'\n"
        "superollama.Client('http://127.0.0.1:9', api_key='')\n"
        "assert 'httpx' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_unknown_attributes_of_the_package_are_still_errors() -> None:
    import superollama

    with pytest.raises(AttributeError):
        _ = superollama.NoSuchThing  # type: ignore[attr-defined]
