"""The event loop a server process runs on: uvloop when it is installed (it is on Linux and macOS), else
asyncio's own. Used by ``serve`` and by every worker of ``serve --workers N``; and ``settle_heap``, the
garbage collector's settings for a process that has started and now serves.

With glibc, ``serve`` also tunes its malloc for a process that idles most of its life: one arena
(``limit_malloc_arenas``; glibc gives each new thread an arena of its own, up to 8 per CPU, and each
keeps the fragments its threads freed: the registry's, the log writer's and ``to_thread``'s threads held
about 8 MB that way), and once started, the memory start-up freed goes back to the system
(``malloc_trim`` in ``settle_heap``, about 4 MB). The threads that share the arena with the event loop run
Python, under the GIL, so they seldom wait for its lock. ``MALLOC_ARENA_MAX`` in the environment, glibc's
own setting, wins.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
from collections.abc import Coroutine
from typing import Any

__all__ = ["MALLOC_ARENAS", "YOUNG_THRESHOLD", "limit_malloc_arenas", "run", "settle_heap"]

MALLOC_ARENAS = 1  # the main thread's, shared by every thread
_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h

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


def limit_malloc_arenas() -> None:
    """At most ``MALLOC_ARENAS`` malloc arenas from now on: call it before the process starts a thread."""
    libc = _glibc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def settle_heap() -> None:
    """Once the server is up: move everything start-up made (imports, the app, settings, the routing
    snapshot) out of the collector's sight with ``gc.freeze``, and collect the young generation less
    often. A full collection then walks only what serving created since, not the whole start-up heap:
    the pauses that made the p99 tail under load. Frozen objects are still freed by reference count."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (whose malloc ``mallopt`` and ``malloc_trim`` tune), else None."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
    except (AttributeError, ValueError, OSError):  # not a POSIX confstr, or no such name (not glibc)
        return None
    return ctypes.CDLL(None)
