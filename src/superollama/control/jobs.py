"""Long operations as jobs: an id, progress anyone can watch, cancellation, and no half state after a
restart (a job the server did not finish is marked failed when it starts again; a pull's partial files
stay in the store's tmp/ so pulling again resumes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from superollama.core import EventRecord, JobRecord, JobState, Progress
from superollama.errors import Conflict, SuperOllamaError
from superollama.registry import Registry

__all__ = ["Emit", "JobManager", "Work"]

log = logging.getLogger("superollama.jobs")

Emit = Callable[[Progress], None]
Work = Callable[[Emit], Awaitable[Mapping[str, Any]]]

_SAVE_EVERY = 1.0  # seconds between progress writes to the registry


class _Running:
    def __init__(self, record: JobRecord) -> None:
        self.record = record
        self.last: dict[str, Any] = {"status": "queued", "job": record.id}
        self.watchers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.task: asyncio.Task[None] | None = None
        self.saved_at = 0.0


class JobManager:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._running: dict[str, _Running] = {}
        self._closing = False

    async def start(self) -> None:
        """Jobs a previous server left running did not finish: say so (nothing half-done is listed)."""
        for job in await self._registry.jobs.list(states=[JobState.RUNNING], limit=10_000):
            await self._registry.jobs.update(
                job.id, state=JobState.FAILED, error="the server stopped before the job finished"
            )
            await self._event(job, "failed", {"error": "server restarted"})

    async def close(self) -> None:
        self._closing = True
        for running in list(self._running.values()):
            if running.task is not None:
                running.task.cancel()
        await asyncio.gather(
            *(r.task for r in self._running.values() if r.task is not None), return_exceptions=True
        )

    async def submit(
        self,
        kind: str,
        target: str,
        work: Work,
        *,
        actor: str = "api",
        params: Mapping[str, Any] | None = None,
    ) -> JobRecord:
        if self._closing:
            raise Conflict("the server is shutting down")
        record = await self._registry.jobs.add(
            JobRecord(
                id=f"job-{uuid.uuid4().hex[:12]}", kind=kind, target=target, actor=actor, params=params or {}
            )
        )
        running = self._running[record.id] = _Running(record)
        running.task = asyncio.create_task(self._run(running, work), name=f"{kind} {target}")
        return record

    async def get(self, job_id: str) -> JobRecord:
        running = self._running.get(job_id)
        if running is not None:
            return running.record
        return await self._registry.jobs.get(job_id)

    async def list(self, *, limit: int = 50) -> list[JobRecord]:
        return [
            self._running[j.id].record if j.id in self._running else j
            for j in await self._registry.jobs.list(limit=limit)
        ]

    async def cancel(self, job_id: str) -> JobRecord:
        running = self._running.get(job_id)
        if running is None:
            record = await self._registry.jobs.get(job_id)
            raise Conflict(f"job {job_id} already ended ({record.state})")
        if running.task is not None:
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running.task
        return await self._registry.jobs.get(job_id)

    async def wait(self, job_id: str) -> JobRecord:
        running = self._running.get(job_id)
        if running is not None and running.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(running.task)
        return await self._registry.jobs.get(job_id)

    async def watch(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """The job's progress events from now on (starting with the latest), then its final event."""
        running = self._running.get(job_id)
        if running is None:
            yield _final(await self._registry.jobs.get(job_id))
            return
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=1000)
        running.watchers.add(queue)
        try:
            yield running.last
            while (event := await queue.get()) is not None:
                yield event
        finally:
            running.watchers.discard(queue)

    # -- internals -------------------------------------------------------------------------------
    async def _run(self, running: _Running, work: Work) -> None:
        job = running.record
        try:
            result = await work(lambda p: self._progress(running, p.as_dict()))
        except asyncio.CancelledError:
            await self._finish(running, JobState.CANCELLED, error="cancelled")
            raise
        except SuperOllamaError as exc:
            await self._finish(running, JobState.FAILED, error=exc.message)
        except Exception as exc:
            log.exception("job %s (%s %s) failed", job.id, job.kind, job.target)
            await self._finish(running, JobState.FAILED, error=f"internal error: {type(exc).__name__}")
        else:
            await self._finish(running, JobState.SUCCEEDED, result=result)

    def _progress(self, running: _Running, event: dict[str, Any]) -> None:
        running.last = event
        for queue in list(running.watchers):
            if queue.full():  # a watcher that does not read loses old progress, never the end
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)
        now = time.monotonic()
        if now - running.saved_at >= _SAVE_EVERY:
            running.saved_at = now
            asyncio.get_running_loop().create_task(self._save(running.record.id, event))

    async def _save(self, job_id: str, event: dict[str, Any]) -> None:
        with contextlib.suppress(SuperOllamaError):
            if job_id in self._running:
                await self._registry.jobs.update(job_id, progress=event)

    async def _finish(
        self,
        running: _Running,
        state: JobState,
        *,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        job_id = running.record.id
        record = await asyncio.shield(
            self._registry.jobs.update(job_id, state=state, result=result, error=error, progress=running.last)
        )
        running.record = record
        self._running.pop(job_id, None)
        final = _final(record)
        for queue in list(running.watchers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(final)
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        await asyncio.shield(self._event(record, "ok" if state is JobState.SUCCEEDED else str(state), {}))

    async def _event(self, job: JobRecord, result: str, detail: dict[str, Any]) -> None:
        with contextlib.suppress(SuperOllamaError):
            await self._registry.events.add(
                EventRecord(
                    action=f"job.{job.kind}",
                    target=job.target,
                    actor=job.actor,
                    result=result,
                    detail={"job": job.id, **detail},
                )
            )


def _final(record: JobRecord) -> dict[str, Any]:
    if record.state is JobState.SUCCEEDED:
        return {"status": "success", "job": record.id, **record.result}
    return {
        "status": str(record.state),
        "job": record.id,
        "error": {"message": record.error or str(record.state)},
    }
