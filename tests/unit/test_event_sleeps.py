"""A sleep on an event ends with its task's cancellation, whenever that comes: a poller's sleep
(``control.feed.Nudge``), a joined node's pause between tries (``cluster.join.NodeSupervisor``), and a
request waiting for the node agent process to be back (``workers.remote_agent.RemoteAgent``).

On Python 3.11, ``asyncio.wait_for(event.wait(), t)`` returns normally when its task is cancelled in the
turns between the event being set and the task resuming: the cancellation is lost, the poller runs on, and
whoever cancelled it waits for it forever (a shutdown hung that way; a client that went away would have
its request go on). Every offset of the cancellation from the wake-up is tried."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from superollama.cluster.join import JoinSpec, NodeSupervisor
from superollama.control.feed import Nudge
from superollama.workers.remote_agent import RemoteAgent

Sleep = tuple[Coroutine[Any, Any, object], Callable[[], None]]  # the sleep, and what wakes it


def _nudge(watched: bool) -> Sleep:
    nudge = Nudge(watched=watched)
    return nudge.sleep(60), nudge.set


def _join_pause() -> Sleep:
    stop = asyncio.Event()
    node = NodeSupervisor(JoinSpec(url="http://127.0.0.1:1", token="t", name="n"))
    return node._pause(stop, 60), stop.set


def _agent_back(tmp: Path) -> Sleep:
    remote = RemoteAgent(tmp / "agent.sock", {}, node="test", load_timeout=10)
    deadline = asyncio.get_running_loop().time() + 60
    return remote._reachable(deadline, "load m"), remote._connected.set


SLEEPS: dict[str, Callable[[Path], Sleep]] = {
    "nudge-watched": lambda _: _nudge(True),
    "nudge": lambda _: _nudge(False),
    "join-pause": lambda _: _join_pause(),
    "agent-back": _agent_back,
}


@pytest.mark.parametrize("turns", range(6))
@pytest.mark.parametrize("kind", SLEEPS)
async def test_a_sleep_cancelled_as_its_event_comes_ends_cancelled(
    kind: str, turns: int, tmp_path: Path
) -> None:
    sleep, wake = SLEEPS[kind](tmp_path)
    sleeper = asyncio.create_task(sleep)
    await asyncio.sleep(0)  # asleep on the event
    wake()
    for _ in range(turns):
        await asyncio.sleep(0)
    if sleeper.done():  # it woke and returned before the cancellation: nothing to lose
        await sleeper
        return
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
