"""Long operations as jobs: an id, progress anyone can watch, cancellation, and no half state after a
restart (a job the server did not finish is marked failed when it starts again; a pull's partial files
stay beside the store's blobs so pulling again resumes).

Every job reaches a final state: whatever its work raises ends it (``failed`` with the reason, and the
error's status and code in ``result["error"]`` so the edges answer like the error would), and when the
registry cannot record that end (a full disk, a lost database) the job still ends for its watchers and in
this process, and the record is written again later. ``cancel`` answers in every state: a job running here
stops; one the registry lists as running that no longer runs anywhere in this process (its server stopped)
is marked cancelled; a job that already ended is a ``Conflict`` that says how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
_RESAVE_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)  # retries of a final state the registry refused


class _Running:
    def __init__(self, record: JobRecord) -> None:
        self.record = record
        self.last: dict[str, Any] = {"status": "queued", "job": record.id}
        self.watchers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.task: asyncio.Task[None] | None = None
        self.saved_at = 0.0
        self.ending = False  # _finish has begun: no second end


class JobManager:
    def __init__(self, registry: Registry, *, owner: str | None = None, shared: bool = False) -> None:
        """``owner``: the gateway that runs the jobs submitted here (recorded with each). ``shared``: other
        gateways share the registry (Postgres), so a job listed as running may be another's, alive: only
        the reconciler leader ends those, and only once their gateway is dead (``end_orphans``)."""
        self._registry = registry
        self._owner = owner
        self._shared = shared
        self._running: dict[str, _Running] = {}
        self._unsaved: dict[str, JobRecord] = {}  # ended here, not recorded yet (the registry refused)
        self._resaving: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        """Jobs a previous server left running did not finish: say so (nothing half-done is listed). With a
        shared registry, only this gateway's own (a restarted gateway keeps its id): the leader ends those
        of dead gateways."""
        if self._shared:
            if self._owner is not None:
                for job in await self._registry.cluster.end_orphan_jobs(
                    (), lambda _owner: "the server stopped before the job finished", owner=self._owner
                ):
                    await self._event(job, "failed", {"error": "server restarted"})
            return
        for job in await self._registry.jobs.list(states=[JobState.RUNNING], limit=10_000):
            await self._registry.jobs.update(
                job.id, state=JobState.FAILED, error="the server stopped before the job finished"
            )
            await self._event(job, "failed", {"error": "server restarted"})

    async def end_orphans(self, alive: set[str], *, leader: str) -> list[JobRecord]:
        """The leader's duty: every job left ``running`` by a gateway not in ``alive`` ends ``failed``
        with a reason that names it (never stuck ``running``)."""

        def reason(owner: str | None) -> str:
            who = f"gateway {owner}" if owner else "the server"
            return (
                f"{who} running this job stopped before it finished (ended by the reconciler leader "
                f"{leader}); run it again (a pull resumes from its partial files)"
            )

        ended = await self._registry.cluster.end_orphan_jobs(alive, reason)
        for job in ended:
            await self._event(job, "failed", {"error": job.error, "orphan": True})
        return ended

    async def close(self) -> None:
        self._closing = True
        for running in list(self._running.values()):
            if running.task is not None:
                running.task.cancel()
        running_now = list(self._running.values())
        await asyncio.gather(*(r.task for r in running_now if r.task is not None), return_exceptions=True)
        for running in running_now:
            await self._settle(running)
        for task in list(self._resaving):
            task.cancel()
        await asyncio.gather(*self._resaving, return_exceptions=True)
        for record in list(self._unsaved.values()):  # one last try
            await self._save_final(record)

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
            ),
            owner=self._owner,
        )
        running = self._running[record.id] = _Running(record)
        running.task = asyncio.create_task(self._run(running, work), name=f"{kind} {target}")
        running.task.add_done_callback(lambda _task: self._settle_soon(running))
        return record

    async def get(self, job_id: str) -> JobRecord:
        running = self._running.get(job_id)
        if running is not None:
            return running.record
        if job_id in self._unsaved:
            return self._unsaved[job_id]
        return await self._registry.jobs.get(job_id)

    async def list(self, *, limit: int = 50) -> list[JobRecord]:
        return [self._current(j) for j in await self._registry.jobs.list(limit=limit)]

    def _current(self, job: JobRecord) -> JobRecord:
        if job.id in self._running:
            return self._running[job.id].record
        return self._unsaved.get(job.id, job)

    async def cancel(self, job_id: str) -> JobRecord:
        """Stop a job and answer its final record; see the module docstring for each state."""
        running = self._running.get(job_id)
        if running is not None and running.task is not None and not running.task.done():
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running.task
            await self._settle(running)
            return await self.get(job_id)
        record = await self.get(job_id)
        if record.state is JobState.RUNNING:  # listed as running, but nothing here runs it
            record = await self._registry.jobs.update(
                job_id, state=JobState.CANCELLED, error="cancelled (it was no longer running on this server)"
            )
            await self._event(record, "cancelled", {"orphan": True})
            return record
        how = f"{record.state}: {record.error}" if record.error else str(record.state)
        raise Conflict(f"job {job_id} already ended ({how}); nothing to cancel")

    async def wait(self, job_id: str) -> JobRecord:
        running = self._running.get(job_id)
        if running is not None and running.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(running.task)
        return await self.get(job_id)

    async def watch(self, job_id: str, *, keepalive: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """The job's progress events from now on (starting with the latest), then its final event.

        With ``keepalive``, the latest event is repeated after that many seconds without a new one, so a
        client reading the stream with a read timeout can tell a quiet job from a dead connection.
        """
        running = self._running.get(job_id)
        if running is None:
            yield _final(await self.get(job_id))
            return
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=1000)
        running.watchers.add(queue)
        try:
            yield running.last
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), keepalive)
                except TimeoutError:
                    yield running.last
                    continue
                if event is None:
                    break
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
            log.warning("job %s (%s %s) failed: %s", job.id, job.kind, job.target, exc.message)
            await self._finish(running, JobState.FAILED, error=exc.message, result=_error_result(exc))
        except Exception as exc:
            log.exception("job %s (%s %s) failed", job.id, job.kind, job.target)
            error = f"internal error: {type(exc).__name__}: {exc}".rstrip(": ")
            await self._finish(running, JobState.FAILED, error=error, result=_error_result(None))
        else:
            await self._finish(running, JobState.SUCCEEDED, result=result)

    def _settle_soon(self, running: _Running) -> None:
        """A job's task is done: make sure its end is recorded (see ``_settle``)."""
        if not running.ending and not self._closing:
            task = asyncio.get_running_loop().create_task(self._settle(running))
            self._resaving.add(task)
            task.add_done_callback(self._resaving.discard)

    async def _settle(self, running: _Running) -> None:
        """Record the end of a job whose task ended without doing so: one cancelled before it first ran
        (a job cancelled while still queued), or one that failed where nothing expected it."""
        if running.ending or running.task is None or not running.task.done():
            return
        if running.task.cancelled():
            await self._finish(running, JobState.CANCELLED, error="cancelled")
        else:
            exc = running.task.exception()
            error = f"internal error: {type(exc).__name__}: {exc}" if exc else "internal error: no result"
            await self._finish(running, JobState.FAILED, error=error, result=_error_result(None))

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
        if running.ending:
            return
        running.ending = True
        job_id = running.record.id
        interrupted: asyncio.CancelledError | None = None
        try:
            record = await asyncio.shield(
                self._registry.jobs.update(
                    job_id, state=state, result=result, error=error, progress=running.last
                )
            )
        except (Exception, asyncio.CancelledError) as exc:  # the job ends anyway; recorded again later
            if isinstance(exc, asyncio.CancelledError):
                interrupted = exc
            else:
                log.error("job %s ended (%s) but the registry could not record it: %s", job_id, state, exc)
            record = dataclasses.replace(
                running.record, state=state, result=dict(result or {}), error=error, progress=running.last
            )
            self._unsaved[job_id] = record
            task = asyncio.get_running_loop().create_task(self._resave(record))
            self._resaving.add(task)
            task.add_done_callback(self._resaving.discard)
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
        if interrupted is not None:
            raise interrupted
        await asyncio.shield(self._event(record, "ok" if state is JobState.SUCCEEDED else str(state), {}))

    async def _resave(self, record: JobRecord) -> None:
        for delay in _RESAVE_DELAYS:
            await asyncio.sleep(delay)
            if await self._save_final(record):
                return

    async def _save_final(self, record: JobRecord) -> bool:
        """Write a final state the registry refused before; True once it is recorded."""
        try:
            await self._registry.jobs.update(
                record.id,
                state=record.state,
                result=record.result,
                error=record.error,
                progress=record.progress,
            )
        except Exception as exc:
            log.warning("job %s: still cannot record its end (%s): %s", record.id, record.state, exc)
            return False
        self._unsaved.pop(record.id, None)
        return True

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


def _error_result(exc: SuperOllamaError | None) -> dict[str, Any]:
    """What a failed job keeps of its error besides the message: how the edges should answer it."""
    if exc is None:
        return {"error": {"status": 500, "type": "internal_error", "code": None}}
    return {"error": {"status": exc.status, "type": exc.type, "code": exc.code}}


def _final(record: JobRecord) -> dict[str, Any]:
    if record.state is JobState.SUCCEEDED:
        return {"status": "success", "job": record.id, **record.result}
    kept = record.result.get("error")
    error: dict[str, Any] = {"message": record.error or str(record.state)}
    if isinstance(kept, dict) and kept.get("code"):
        error["code"] = kept["code"]
    return {"status": str(record.state), "job": record.id, "error": error}
