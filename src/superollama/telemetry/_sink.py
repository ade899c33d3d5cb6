"""One background thread that hands each finished request to the slow sinks, off the event loop.

The access log (JSON formatting, I/O), OTLP spans and the Opik trace are built here, in order, from the
``RequestRecord``; the OTel and Opik SDKs then batch and send from their own threads. A bounded queue sits
in front: when it is full the record is dropped and counted, the request never waits.

Records are handed over in batches: on the event loop, ``put`` appends to a list, and the first record of a
list schedules one hand-over 20 ms later. Under load that is one queue operation (and one wake-up of the
thread, which then contends for the GIL) per many requests rather than per request; ``flush`` and
``close`` hand over what is gathered first. A sink with a ``many`` method takes the batch whole (the
access log: one hand-over to the log writer per batch, not per line); the others, record by record.
"""

from __future__ import annotations

import asyncio
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
_BATCH_SECONDS: Final = 0.02  # how long the loop gathers records before handing them to the thread


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
        self._batch: list[RequestRecord] = []
        self._queued = 0  # records handed over and not yet through the sinks (approximate across threads)
        self._maxsize = maxsize
        self.dropped = 0
        self.failures = 0

    @property
    def sinks(self) -> tuple[Sink, ...]:
        return self._sinks

    @property
    def wanted(self) -> bool:
        """Whether any sink would do something with a record (a sink with an ``enabled`` attribute, such
        as the access log below its level, can say no): when none would, ``put`` is not worth a call."""
        # a loop, not any() over a generator: every request asks (0.43 → 0.09 µs)
        for sink in self._sinks:  # noqa: SIM110
            if getattr(sink, "enabled", True):
                return True
        return False

    def add(self, sink: Sink) -> None:
        """Add a sink (before ``start``, or from the loop: the tuple is swapped, never mutated)."""
        self._sinks = (*self._sinks, sink)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def put(self, record: RequestRecord) -> bool:
        """Queue a record for the sinks; ``False`` (and counted) when the queue is full."""
        if self._queued + len(self._batch) >= self._maxsize:
            self._drop(1)
            return False
        batch = self._batch
        batch.append(record)
        if len(batch) == 1:
            try:
                asyncio.get_running_loop().call_later(_BATCH_SECONDS, self.hand_over)
            except RuntimeError:  # not on an event loop: hand it over now
                self.hand_over()
        return True

    def hand_over(self) -> None:
        """Queue the records gathered so far (call it on the loop before a flush from another thread)."""
        batch, self._batch = self._batch, []
        if not batch:
            return
        self._queued += len(batch)
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self._queued -= len(batch)
            self._drop(len(batch))

    def _drop(self, count: int) -> None:
        before, self.dropped = self.dropped, self.dropped + count
        if self._on_drop is not None:
            for _ in range(count):
                self._on_drop()
        if before == 0 or before // 1000 != self.dropped // 1000:
            log.warning("telemetry queue full: %d records dropped so far", self.dropped)

    def flush(self, timeout: float = _FLUSH_TIMEOUT) -> bool:
        """Block until every queued record went through the sinks (``False`` on timeout)."""
        self.hand_over()
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
        self.hand_over()
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
            if isinstance(item, list):
                self._deliver(item)
                self._queued -= len(item)
            elif callable(item):
                item()

    def _deliver(self, records: list[RequestRecord]) -> None:
        for sink in self._sinks:
            many = getattr(sink, "many", None)
            if many is not None:
                try:
                    many(records)
                except Exception:
                    self._failed()
                continue
            for record in records:
                try:
                    sink(record)
                except Exception:
                    self._failed()

    def _failed(self) -> None:
        self.failures += 1
        if self.failures == 1 or self.failures % 1000 == 0:
            log.exception("a telemetry sink failed (%d failures so far)", self.failures)
