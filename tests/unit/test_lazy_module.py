"""``core/lazy.py``: a module whose code runs on its first attribute read, not at ``lazy_module``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from superollama.core.lazy import lazy_module

PACKAGE = "so_lazy_probe"


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A package whose module ``heavy`` appends to ``runs`` (in the package) each time its code runs."""
    root = tmp_path / PACKAGE
    root.mkdir()
    (root / "__init__.py").write_text("runs = []\n")
    (root / "heavy.py").write_text(f"import {PACKAGE}\n{PACKAGE}.runs.append('heavy')\nVALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield root
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def test_the_code_runs_on_the_first_attribute_read_once(package: Path) -> None:
    heavy = lazy_module(f"{PACKAGE}.heavy")
    runs = importlib.import_module(PACKAGE).runs
    assert runs == []
    assert heavy.VALUE == 42
    assert heavy.VALUE == 42
    assert runs == ["heavy"]


def test_an_import_statement_after_it_gets_the_same_module(package: Path) -> None:
    heavy = lazy_module(f"{PACKAGE}.heavy")
    from so_lazy_probe import heavy as imported  # type: ignore[import-not-found]

    assert imported is heavy
    assert importlib.import_module(PACKAGE).runs == []  # the import statement alone ran nothing
    assert imported.VALUE == 42


def test_a_module_already_imported_is_returned_as_it_is(package: Path) -> None:
    loaded = importlib.import_module(f"{PACKAGE}.heavy")
    assert lazy_module(f"{PACKAGE}.heavy") is loaded
    assert importlib.import_module(PACKAGE).runs == ["heavy"]


def test_a_missing_module_fails_at_once(package: Path) -> None:
    with pytest.raises(ModuleNotFoundError):
        lazy_module(f"{PACKAGE}.missing")
