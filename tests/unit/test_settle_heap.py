"""``settle_heap``, run once a server is up: the start-up heap is frozen out of the collector's sight, the
young generation is collected less often, and glibc gives freed memory back (``malloc_trim``); and
``limit_malloc_arenas``. The collector's settings are checked in a child interpreter, so that this test
process keeps its own; glibc's calls through a stand-in that records them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from superollama.gateway import loop
from superollama.gateway.loop import YOUNG_THRESHOLD

SRC = Path(__file__).resolve().parents[2] / "src"

CHILD = """
import gc, json
import superollama.app  # the start-up heap of a server process
from superollama.gateway.loop import settle_heap
before = (gc.get_freeze_count(), gc.get_threshold())
settle_heap()
print(json.dumps({"before": before, "after": (gc.get_freeze_count(), gc.get_threshold())}))
"""


def test_settle_heap_freezes_start_up_and_raises_the_young_threshold() -> None:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    (frozen_before, threshold_before), (frozen_after, threshold_after) = seen["before"], seen["after"]
    assert frozen_before == 0
    assert frozen_after > 10_000  # the imported modules' objects, at the very least
    assert threshold_after == [YOUNG_THRESHOLD, threshold_before[1], threshold_before[2]]


class _Libc:
    """A stand-in for glibc that records the malloc calls made to it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", (param, value)))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", (pad,)))
        return 1


def test_serve_limits_glibc_to_one_arena_unless_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = _Libc()
    monkeypatch.setattr(loop, "_glibc", lambda: libc)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    loop.limit_malloc_arenas()
    assert libc.calls == [("mallopt", (-8, loop.MALLOC_ARENAS))]  # M_ARENA_MAX
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # glibc read it at start: it stays
    loop.limit_malloc_arenas()
    assert len(libc.calls) == 1


def test_settle_heap_gives_start_up_garbage_back(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = _Libc()
    monkeypatch.setattr(loop, "_glibc", lambda: libc)
    monkeypatch.setattr(loop.gc, "freeze", lambda: None)  # this test process keeps its collector
    monkeypatch.setattr(loop.gc, "set_threshold", lambda *_: None)
    loop.settle_heap()
    assert libc.calls == [("malloc_trim", (0,))]


def test_without_glibc_nothing_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_confstr(_name: str) -> str:
        raise ValueError("unrecognized configuration name")  # what macOS answers

    monkeypatch.setattr(loop.os, "confstr", no_confstr)
    assert loop._glibc() is None
