"""OpenAI batches: a JSONL file of requests, run by the gateway in the background, answered as two files.

Life of a batch: ``validating`` (its input file is read and checked line by line) → ``in_progress``
(its requests are sent, at most ``concurrency`` at once) → ``finalizing`` (the output and error files are
written) → ``completed``. Or ``failed`` (the input file did not validate: ``errors`` names each line),
``cancelling`` → ``cancelled`` (requests not sent yet are not sent; those in flight finish), ``expired``
(the completion window ended first).

Who runs them: the **reconciler leader** (``LeaderLock``; on SQLite the one control plane), like webhook
deliveries: it looks for active batches every ``poll`` seconds and runs each one here, once. A batch
made on another gateway is picked up the same way, and so is one a stopped leader left unfinished.

How a request is sent: ``Sender``, given by the app factory, sends it to this gateway's own URL as the
batch's creator key (a signed session naming that key), so it goes through the same path as a live
request — authentication, the key's model scope, rate limits and budget, routing to any routable model,
version, deployment or connection, and the usage ledger, which meters it to that key.

Why a restart resumes: each request's outcome is written to the registry as it finishes (``Outcome``,
``BatchRepository.record``), so a leader that starts again reads back what is still pending and sends
only that. A request in flight when the server stopped is pending, so it is sent again (at least once,
never lost); a finished one is never sent twice.

Output lines are OpenAI's (``control/batch_files.py`` writes them): ``{"id", "custom_id", "response":
{"status_code", "request_id", "body"}, "error"}``. A 2xx answer goes to the output file; any other answer
(with its status and body) and a request that got none (``error``: ``{code, message}``, e.g.
``batch_cancelled``) go to the error file.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, Protocol

from superollama.control.batch_files import (
    ENDPOINTS,
    BatchLine,
    Problem,
    output_line,
    parse_batch_jsonl,
    said,
)
from superollama.control.feed import Nudge
from superollama.errors import InvalidRequest, NotFound, SuperOllamaError
from superollama.registry._batches import (
    BatchRecord,
    BatchRepository,
    BatchRequestRecord,
    Outcome,
)
from superollama.registry._rag import FileRecord

__all__ = ["Answer", "BatchFiles", "BatchManager", "Sender"]

log = logging.getLogger("superollama.control.batches")

WINDOWS = {"24h": timedelta(hours=24)}
_MAX_ERRORS = 100  # problems kept on a failed batch
_RETRY_STATUSES = frozenset({429, 502, 503, 504})  # busy or away: the same request is tried again
_BACKOFF_CAP = 30.0


@dataclass(frozen=True, slots=True)
class Answer:
    """What the gateway answered one request: status, parsed body, request id, ``Retry-After``."""

    status: int
    body: Any
    request_id: str
    retry_after: float | None = None


class Sender(Protocol):
    """Sends one request of a batch through the gateway, as the batch's key (see the module docstring).
    Raises ``OSError`` (or ``asyncio.TimeoutError``) when the gateway could not be reached."""

    def ready(self) -> bool: ...

    async def send(
        self, batch: BatchRecord, url: str, body: Mapping[str, Any], request_id: str
    ) -> Answer: ...


class BatchFiles(Protocol):
    """The files a batch reads and writes (``plugins.rag.files.FileService``)."""

    async def get(self, file_id: str, *, key_id: str | None) -> FileRecord: ...

    async def read(self, record: FileRecord) -> bytes: ...

    async def save(self, data: bytes, filename: str, purpose: str, *, key_id: str | None) -> FileRecord: ...


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 16:
        raise InvalidRequest("metadata must be an object of at most 16 pairs", param="metadata")
    for k, v in value.items():
        if len(k) > 64 or not isinstance(v, str) or len(v) > 512:
            raise InvalidRequest(
                "metadata keys are at most 64 characters, values strings of at most 512", param="metadata"
            )
    return dict(value)


def _usage(body: Any) -> tuple[int, int]:
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return (
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
    )


class BatchManager:
    """The API's use cases (create, get, list, cancel) and, on the leader, the runner."""

    def __init__(
        self,
        repo: BatchRepository,
        files: BatchFiles,
        sender: Sender,
        *,
        concurrency: int = 4,
        poll: float = 1.0,
        retries: int = 5,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        nudge: Nudge | None = None,
    ) -> None:
        """``nudge``: the change feed's for the ``batches`` topic (the set of active batches moved); the
        leader's loop sleeps on it between looks instead of looking every ``poll`` seconds."""
        self._repo = repo
        self._nudge = nudge or Nudge(watched=False)
        self._files = files
        self._sender = sender
        self._concurrency = concurrency
        self._poll = poll
        self._retries = retries
        self._sleep = sleep
        self._loop: asyncio.Task[None] | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, asyncio.Event] = {}  # a running batch's stop: cancelled or expired

    # -- use cases ---------------------------------------------------------------------------------------
    async def create(
        self, body: Mapping[str, Any], *, key_id: str | None, key_prefix: str | None
    ) -> BatchRecord:
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str) or not file_id:
            raise InvalidRequest("input_file_id is required", param="input_file_id")
        endpoint = body.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise InvalidRequest(
                f"endpoint must be one of {', '.join(ENDPOINTS)} (got {endpoint!r})", param="endpoint"
            )
        window = body.get("completion_window")
        if window not in WINDOWS:
            raise InvalidRequest(
                f"completion_window must be {', '.join(WINDOWS)} (got {window!r})", param="completion_window"
            )
        metadata = _metadata(body.get("metadata"))
        record = await self._files.get(file_id, key_id=key_id)
        if record.purpose != "batch":
            raise InvalidRequest(
                f"file {file_id} has purpose {record.purpose!r}; a batch reads a file of purpose 'batch'",
                param="input_file_id",
            )
        now = self._repo.now()
        added = await self._repo.add(
            BatchRecord(
                id=f"batch_{uuid.uuid4().hex[:24]}",
                endpoint=str(endpoint),
                input_file_id=file_id,
                completion_window=str(window),
                expires_at=now + WINDOWS[str(window)],
                key_id=key_id,
                key_prefix=key_prefix,
                metadata=metadata,
                created_at=now,
            )
        )
        self._nudge.set()  # the leader's loop, if it runs here, starts it now
        return added

    async def get(self, batch_id: str, *, key_id: str | None) -> BatchRecord:
        batch = await self._repo.find(batch_id, key_id=key_id)
        if batch is None:
            raise NotFound(f"No such batch: {batch_id}", param="batch_id")
        return batch

    async def list(
        self, *, key_id: str | None, limit: int = 20, after: str | None = None
    ) -> builtins.list[BatchRecord]:
        return await self._repo.list(key_id=key_id, limit=limit, after=after)

    async def cancel(self, batch_id: str, *, key_id: str | None) -> BatchRecord:
        """``cancelling`` at once (the runner, here or on the leader, ends it ``cancelled``); a batch that
        already ended is answered as it is, as OpenAI does."""
        await self.get(batch_id, key_id=key_id)
        moved = await self._repo.move(batch_id, "cancelling", expect=("validating", "in_progress"))
        if moved is None:
            return await self.get(batch_id, key_id=key_id)
        if (stop := self._stops.get(batch_id)) is not None:
            stop.set()
        return moved

    # -- the leader's loop -------------------------------------------------------------------------------
    async def elected(self, leader: bool) -> None:
        """``LeaderLock``'s handler: only the leader runs batches."""
        if leader and self._loop is None:
            self._loop = asyncio.create_task(self._run_forever(), name="batches")
        elif not leader:
            await self.close()

    async def close(self) -> None:
        """Stop running batches here; what is in flight stays pending (sent again by the next leader)."""
        tasks = [t for t in (self._loop, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loop = None
        self._running.clear()
        self._stops.clear()

    async def _run_forever(self) -> None:
        while True:
            settled = False  # every active batch has its runner: only a change gives more work
            try:
                await self.tick()
                settled = self._sender.ready()
            except asyncio.CancelledError:
                raise
            except Exception:  # the registry may be away for a while: the next round tries again
                log.exception("batches: this round failed")
            if settled and self._nudge.watched:
                await self._nudge.sleep(self._poll)
            else:
                await self._sleep(self._poll)

    async def tick(self) -> int:
        """Start a runner for every active batch not running here yet; how many were started."""
        if not self._sender.ready():
            return 0
        started = 0
        for batch in await self._repo.active():
            if batch.id in self._running:
                continue
            task = asyncio.create_task(self._run(batch.id), name=f"batch {batch.id}")
            self._running[batch.id] = task
            task.add_done_callback(partial(self._ended, batch.id))
            started += 1
        return started

    def _ended(self, batch_id: str, _task: asyncio.Task[None]) -> None:
        self._running.pop(batch_id, None)
        self._stops.pop(batch_id, None)

    async def wait(self, batch_id: str) -> None:
        """Until the batch's runner here ends (tests, shutdown)."""
        task = self._running.get(batch_id)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(task)

    # -- one batch ---------------------------------------------------------------------------------------
    async def _run(self, batch_id: str) -> None:
        try:
            batch = await self._repo.find_any(batch_id)
            if batch is None:
                return
            if batch.status == "validating":
                batch = await self._validate(batch)
            if batch is not None and batch.status == "in_progress":
                batch = await self._send_all(batch)
            if batch is not None and batch.status in ("finalizing", "cancelling"):
                await self._finalize(batch)
        except asyncio.CancelledError:
            raise
        except SuperOllamaError as exc:  # the registry or the files: the next round tries again
            log.warning("batch %s: %s; trying again", batch_id, exc.message)
        except Exception:
            log.exception("batch %s failed here; trying again", batch_id)

    async def _validate(self, batch: BatchRecord) -> BatchRecord | None:
        problems: list[Problem]
        lines: list[BatchLine] = []
        try:
            record = await self._files.get(batch.input_file_id, key_id=batch.key_id)
            lines, problems = parse_batch_jsonl(await self._files.read(record), batch.endpoint)
        except NotFound as exc:
            problems = [Problem(None, "file_not_found", exc.message, "input_file_id")]
        except OSError as exc:  # its bytes are not in this gateway's home (uploaded to another machine's)
            why = f"the input file cannot be read here: {exc.strerror or exc}"
            problems = [Problem(None, "file_unreadable", why, "input_file_id")]
        if problems:
            errors = [
                {"code": p.code, "message": p.message, "param": p.param, "line": p.line}
                for p in problems[:_MAX_ERRORS]
            ]
            log.info("batch %s failed validation: %s", batch.id, said(problems[0]))
            return await self._repo.move(batch.id, "failed", expect=("validating",), errors=errors)
        started = await self._repo.start(batch.id, [(ln.line, ln.custom_id, ln.body) for ln in lines])
        return started if started is not None else await self._repo.find_any(batch.id)

    async def _send_all(self, batch: BatchRecord) -> BatchRecord | None:
        stop = self._stops.setdefault(batch.id, asyncio.Event())
        queue = deque(await self._repo.pending(batch.id))

        async def worker() -> None:
            while queue and not stop.is_set():
                if self._repo.now() >= batch.expires_at:  # nothing more is sent once the window ends
                    stop.set()
                    break
                request = queue.popleft()
                outcome = await self._one(batch, request, stop)
                if outcome is not None:
                    await self._repo.record(batch.id, request.line, outcome)

        watch = asyncio.create_task(self._watch(batch, stop), name=f"batch {batch.id} watch")
        try:
            await asyncio.gather(*(worker() for _ in range(max(1, min(self._concurrency, len(queue))))))
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        now = await self._repo.find_any(batch.id)
        if now is None:
            return None
        if now.status == "in_progress" and self._repo.now() >= batch.expires_at:
            await self._repo.close_pending(
                batch.id,
                "expired",
                {"code": "batch_expired", "message": "the completion window ended before it was sent"},
            )
            return await self._finalize(now, end="expired")
        if now.status == "in_progress":
            return await self._repo.move(batch.id, "finalizing", expect=("in_progress",))
        return now

    async def _watch(self, batch: BatchRecord, stop: asyncio.Event) -> None:
        """Stop sending when the batch is cancelled on another gateway or its window ends."""
        while not stop.is_set():
            await self._sleep(self._poll)
            now = await self._repo.find_any(batch.id)
            if now is None or now.status != "in_progress" or self._repo.now() >= batch.expires_at:
                stop.set()

    async def _one(
        self, batch: BatchRecord, request: BatchRequestRecord, stop: asyncio.Event
    ) -> Outcome | None:
        """Send one request (again while the gateway is busy or away); None: stopped before an answer."""
        request_id = f"req_{batch.id.removeprefix('batch_')}_{request.line}"
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = await self._sender.send(batch, batch.endpoint, request.body, request_id)
            except (OSError, TimeoutError) as exc:
                if attempt > self._retries:
                    return Outcome(
                        "failed",
                        error={"code": "server_error", "message": f"the gateway did not answer: {exc}"},
                        request_id=request_id,
                    )
                await self._backoff(attempt, None)
                if stop.is_set():
                    return None
                continue
            if answer.status in _RETRY_STATUSES and attempt <= self._retries:
                await self._backoff(attempt, answer.retry_after)
                if stop.is_set():
                    return None
                continue
            tokens_in, tokens_out = _usage(answer.body)
            return Outcome(
                "completed" if 200 <= answer.status < 300 else "failed",
                status_code=answer.status,
                request_id=answer.request_id,
                response=answer.body,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
            )

    async def _backoff(self, attempt: int, retry_after: float | None) -> None:
        await self._sleep(min(_BACKOFF_CAP, max(retry_after or 0.0, 0.5 * 2 ** (attempt - 1))))

    async def _finalize(self, batch: BatchRecord, *, end: str | None = None) -> BatchRecord | None:
        """Write the output and error files, then the final status (again after a restart: the files of
        an unfinished finalization are written anew)."""
        if batch.status == "cancelling":
            await self._repo.close_pending(
                batch.id,
                "cancelled",
                {
                    "code": "batch_cancelled",
                    "message": "the batch was cancelled before this request was sent",
                },
            )
            end = "cancelled"
        end = end or "completed"
        requests = await self._repo.requests(batch.id)
        output = [output_line(batch, r) for r in requests if r.state == "completed"]
        errors = [output_line(batch, r) for r in requests if r.state not in ("completed", "pending")]
        output_id = await self._save(batch, output, "output")
        error_id = await self._save(batch, errors, "error")
        return await self._repo.move(
            batch.id,
            end,
            expect=(batch.status,),
            output_file_id=output_id,
            error_file_id=error_id,
        )

    async def _save(self, batch: BatchRecord, lines: Sequence[bytes], kind: str) -> str | None:
        if not lines:
            return None
        data = b"\n".join(lines) + b"\n"
        record = await self._files.save(data, f"{batch.id}_{kind}.jsonl", "batch_output", key_id=batch.key_id)
        return record.id
