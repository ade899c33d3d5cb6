"""One request's claim on an instance, and its move to a replacement when that instance died first.

A request picks a target from the snapshot, then is counted in flight there until it ends. Between the
pick and the send the instance may be gone: its process crashed (the agent sees the exit within
milliseconds, but a request can be faster), or it was stopped as idle. Such a request never reached a
backend, so it is not lost: ``replace`` asks whoever runs the instances for a ready one in its place
(the same bounded wait as a cold start), moves the accounting there, and the caller sends again. Only a
request the backend had already begun to answer fails with its instance.
"""

from __future__ import annotations

from superollama.control import Route, RouteTarget
from superollama.core import Endpoint
from superollama.gateway.seams import InstanceAccounting, InstanceStarter

__all__ = ["Lease"]

_REPLACEMENTS = 1  # a replacement that dies too before answering is a real outage: say so


class Lease:
    """The target a request is counted on (``target``; ``endpoint`` and ``instance_id`` are its)."""

    __slots__ = ("_accounting", "_left", "_route", "_starter", "target")

    def __init__(
        self, route: Route, target: RouteTarget, starter: InstanceStarter, accounting: InstanceAccounting
    ) -> None:
        self._route = route
        self._starter = starter
        self._accounting = accounting
        self._left = _REPLACEMENTS
        self.target = target
        accounting.acquire(target.instance_id)

    @property
    def endpoint(self) -> Endpoint:
        return self.target.endpoint

    @property
    def instance_id(self) -> str:
        return self.target.instance_id

    async def replace(self, *, reached: bool) -> bool:
        """Move to a replacement of the target, which gave no answer (``reached``: the request may have
        reached it); False when the request must fail instead."""
        if self._left <= 0 or self._route.connection is not None:
            return False
        self._left -= 1
        new = await self._starter.replace(self._route, self.target.instance_id, reached=reached)
        if new is None:
            return False
        self._accounting.acquire(new.instance_id)
        self._accounting.release(self.target.instance_id)
        self.target = new
        return True

    def release(self) -> None:
        self._accounting.release(self.target.instance_id)
