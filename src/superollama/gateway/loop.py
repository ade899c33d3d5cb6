"""The event loop a server process runs on: uvloop when it is installed (it is on Linux and macOS), else
asyncio's own. Used by ``serve`` and by every worker of ``serve --workers N``; and ``settle_heap``, the
garbage collector's settings for a process that has started and now serves."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any

__all__ = ["YOUNG_THRESHOLD", "run", "settle_heap"]

# Allocations (net of frees) between two young-generation collections: CPython's 700 runs one every few
# requests at a few thousand requests a second; most per-request objects die by reference count anyway.
YOUNG_THRESHOLD = 10_000


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to completion on a new event loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def settle_heap() -> None:
    """Once the server is up: move everything start-up made (imports, the app, settings, the routing
    snapshot) out of the collector's sight with ``gc.freeze``, and collect the young generation less
    often. A full collection then walks only what serving created since, not the whole start-up heap:
    the pauses that made the p99 tail under load. Frozen objects are still freed by reference count."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
