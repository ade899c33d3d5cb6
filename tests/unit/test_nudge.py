"""A poller's sleep (``control.feed.Nudge``) ends with its task's cancellation, whenever that comes.

On Python 3.11, ``asyncio.wait_for(event.wait(), t)`` returns normally when its task is cancelled in the
turns between the event being set and the task resuming: the cancellation is lost, the poller runs on, and
whoever cancelled it waits for it forever (a shutdown hung that way). Every offset of the cancellation
from the wake-up is tried."""

from __future__ import annotations

import asyncio

import pytest

from superollama.control.feed import Nudge


@pytest.mark.parametrize("turns", range(6))
@pytest.mark.parametrize("watched", [True, False])
async def test_a_sleep_cancelled_as_its_nudge_comes_is_cancelled(turns: int, watched: bool) -> None:
    nudge = Nudge(watched=watched)
    sleeper = asyncio.create_task(nudge.sleep(60))
    await asyncio.sleep(0)  # asleep on the event
    nudge.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    if sleeper.done():  # it woke and returned before the cancellation: nothing to lose
        await sleeper
        return
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
