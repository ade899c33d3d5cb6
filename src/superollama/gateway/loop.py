"""The event loop a server process runs on: uvloop when it is installed (it is on Linux and macOS), else
asyncio's own. Used by ``serve`` and by every worker of ``serve --workers N``."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["run"]


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to completion on a new event loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
