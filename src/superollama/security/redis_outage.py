"""How the Redis limiter lives through a Redis outage: when to try Redis again, and the log lines (rate
limited, so that an outage under load does not flood the log)."""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["Outage"]

log = logging.getLogger("superollama.security")


class Outage:
    """Rate-limited logging of a Redis outage: once when it starts, at most once a minute while it lasts,
    once when it ends. Holds the retry deadline too (no call to Redis before it)."""

    def __init__(self, monotonic: Callable[[], float], retry_interval: float, fail_open: bool) -> None:
        self._monotonic = monotonic
        self._retry_interval = retry_interval
        self._what = "admitting requests unchecked (fail open)" if fail_open else "refusing requests (503)"
        self.since: float | None = None
        self._retry_at = 0.0
        self._logged_at = 0.0
        self._affected = 0

    def skip(self) -> bool:
        """True while Redis should not be tried; the first caller past the deadline gets to probe it."""
        if self.since is None:
            return False
        now = self._monotonic()
        if now < self._retry_at:
            self._affected += 1
            return True
        self._retry_at = now + self._retry_interval
        return False

    def failed(self, exc: BaseException) -> None:
        now = self._monotonic()
        self._retry_at = now + self._retry_interval
        self._affected += 1
        reason = f"{type(exc).__name__}: {exc}"
        if self.since is None:
            self.since, self._logged_at = now, now
            log.warning("rate limiter: Redis unreachable (%s); %s until it is back", reason, self._what)
        elif now - self._logged_at >= 60:
            self._logged_at = now
            log.warning(
                "rate limiter: Redis still unreachable after %.0fs (%s); %d requests affected",
                now - self.since,
                reason,
                self._affected,
            )

    def recovered(self) -> None:
        if self.since is None:
            return
        log.warning(
            "rate limiter: Redis reachable again after %.1fs; %d requests were affected",
            self._monotonic() - self.since,
            self._affected,
        )
        self.since, self._affected = None, 0
