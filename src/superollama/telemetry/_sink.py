"""One background thread that hands each finished request to the slow sinks, off the event loop.

The access log (JSON formatting, I/O), OTLP spans and the Opik trace are built here, in order, from the
``RequestRecord``; the OTel and Opik SDKs then batch and send from their own threads. A bounded queue sits
in front: when it is full the record is dropped and counted, the request never waits.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Final

from superollama.core import RequestRecord

__all__ = ["Sink", "SinkThread"]

log = logging.getLogger("superollama.telemetry")

Sink = Callable[[RequestRecord], None]
_STOP: Final = object()
_FLUSH_TIMEOUT: Final = 30.0


class SinkThread:
    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        maxsize: int = 10_000,
        on_drop: Callable[[], None] | None = None,
        name: str = "superollama-telemetry",
    ) -> None:
        self._sinks = tuple(sinks)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=maxsize)
        self._on_drop = on_drop
        self._name = name
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.failures = 0

    @property
    def sinks(self) -> tuple[Sink, ...]:
        return self._sinks

    def add(self, sink: Sink) -> None:
        """Add a sink (before ``start``, or from the loop: the tuple is swapped, never mutated)."""
        self._sinks = (*self._sinks, sink)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def put(self, record: RequestRecord) -> bool:
        """Queue a record for the sinks; ``False`` (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("telemetry queue full: %d records dropped so far", self.dropped)
            return False
        return True

    def flush(self, timeout: float = _FLUSH_TIMEOUT) -> bool:
        """Block until every queued record went through the sinks (``False`` on timeout)."""
        if self._thread is None:
            return self._queue.empty()
        done = threading.Event()
        try:
            self._queue.put(done.set, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = _FLUSH_TIMEOUT) -> None:
        """Drain the queue through the sinks, then stop the thread (blocking: call it in a thread)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("telemetry queue still full after %.0f s: stopping without draining", timeout)
            return
        thread.join(timeout)

    def _run(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is _STOP:
                return
            if isinstance(item, RequestRecord):
                self._dispatch(item)
            elif callable(item):
                item()

    def _dispatch(self, record: RequestRecord) -> None:
        for sink in self._sinks:
            try:
                sink(record)
            except Exception:
                self.failures += 1
                if self.failures == 1 or self.failures % 1000 == 0:
                    log.exception("a telemetry sink failed (%d failures so far)", self.failures)
