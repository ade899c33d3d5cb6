"""Waiting for an ``asyncio.Event`` with a deadline.

Not ``asyncio.wait_for(event.wait(), t)``: on Python 3.11 it returns normally when its task is
cancelled in the turns between the event being set and the task resuming. The cancellation is lost, a
poller runs on while its owner waits for it to end (a shutdown hung that way), and a request whose
client went away goes on. ``asyncio.timeout`` never swallows a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["wait_set"]


async def wait_set(event: asyncio.Event, timeout: float) -> bool:
    """Until ``event`` is set (True) or ``timeout`` seconds pass (False); a cancellation is raised."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            return await event.wait()
    return False
