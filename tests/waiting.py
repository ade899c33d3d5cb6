"""Waiting in tests: on a condition, with a deadline, never on the clock.

Why: ``await asyncio.sleep(0.05); assert x`` is a guess about how fast the machine is. On a loaded CI box the
guess is wrong both ways: a positive assertion fails for no reason, and a "nothing changed" assertion
passes *vacuously*, because the code under test simply had not run yet when the test looked.

Two rules, one helper:

1. **Something should happen** → ``await wait_until(lambda: <it happened>, what="...")``. It polls the
   predicate (a plain function or one returning an awaitable) until it returns a truthy value, which it
   returns, or fails the test with ``what`` once ``timeout`` seconds have passed. ``wait_until_sync`` is
   the same for synchronous tests (child processes, servers in threads).

2. **Something should NOT happen** → first wait for a *positive* event proving that the system has gone
   past the point where the unwanted change would have happened, then assert its absence. Examples:
   the task under test is parked on the gate we hold (``wait_until(lambda: agent.loading("m:1"))``), a
   later request was processed, a state moved to DRAINING, a counter or a log line advanced, a child
   process printed "ready". Only then is ``assert not unload.done()`` evidence rather than luck.

A ``sleep`` stays in a test only where time itself is under test (a TTL expires, a bucket refills, a timer
fires), or to simulate a slow peer in a stand-in, always with a comment saying so.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["DEFAULT_TIMEOUT", "wait_until", "wait_until_sync"]

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0  # seconds: generous; a passing test never waits this long


def _failure(what: str | None, timeout: float, last: object) -> AssertionError:
    subject = what or "the condition"
    return AssertionError(f"timed out after {timeout:g} s waiting for {subject} (last value: {last!r})")


async def wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.01,
    what: str | None = None,
) -> T:
    """Poll ``predicate`` (sync, or returning an awaitable) until it is truthy; return its value. Fails
    the test with ``what`` after ``timeout`` seconds. The event loop runs between polls, so tasks the
    test started make progress."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise _failure(what, timeout, value)
        await asyncio.sleep(interval)  # the polling interval, not a synchronisation guess


def wait_until_sync(
    predicate: Callable[[], T],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.02,
    what: str | None = None,
) -> T:
    """``wait_until`` for synchronous tests: poll ``predicate`` until truthy, return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _failure(what, timeout, value)
        time.sleep(interval)  # the polling interval, not a synchronisation guess
