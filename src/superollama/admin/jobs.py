"""Admin API for long operations: ``/pull`` (a job whose progress streams as NDJSON, in the shape of
Ollama's ``/api/pull``) and ``/jobs`` (list, show, watch, cancel).

A progress stream repeats its latest line every ``KEEPALIVE`` seconds while the job is quiet (resolving a
source, hashing), so clients can read it with a read timeout; it ends with the job's final line as soon as
the job ends. A job that failed answers, without ``stream``, with the status and code of its error
(507 ``insufficient_storage`` for a download that does not fit, for instance)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from superollama.admin.routes import PREFIX, actor_of
from superollama.admin.serialize import move_json, version_json
from superollama.control import Controller, JobManager
from superollama.core import JobRecord, Progress
from superollama.errors import InvalidRequest
from superollama.gateway import read_json
from superollama.gateway.responses import json_response as _json

__all__ = ["KEEPALIVE", "JobRoutes", "job_json"]

KEEPALIVE = 10.0  # seconds between repeated progress lines of a quiet job


def job_json(job: JobRecord) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "target": job.target,
        "state": str(job.state),
        "actor": job.actor,
        "params": dict(job.params),
        "progress": dict(job.progress),
        "result": dict(job.result),
        "error": job.error,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "updated_at": job.updated_at.isoformat() if job.updated_at else None,
    }


class JobRoutes:
    def __init__(self, controller: Controller, jobs: JobManager) -> None:
        self._controller = controller
        self._jobs = jobs

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_post(f"{PREFIX}/pull", self.pull)
        r.add_post(f"{PREFIX}/move", self.move)
        r.add_get(f"{PREFIX}/jobs", self.list)
        r.add_get(f"{PREFIX}/jobs/{{id}}", self.show)
        r.add_get(f"{PREFIX}/jobs/{{id}}/watch", self.watch)
        r.add_post(f"{PREFIX}/jobs/{{id}}/cancel", self.cancel)

    async def pull(self, request: web.Request) -> web.StreamResponse:
        """Start a pull job. ``stream`` (default true): NDJSON progress until it ends (the job goes on if
        the client leaves); ``stream: false``: wait and answer the result; ``background: true``: 202 + id."""
        body = await read_json(request)
        source, name, runtime, node = (
            _text(body, "source", required=True),
            _text(body, "name"),
            _text(body, "runtime"),
            _text(body, "node"),
        )
        if node is not None:
            await self._controller.check_copy_node(node)  # 404/409 before any job starts
        actor = actor_of(request)

        async def work(emit: Any) -> dict[str, Any]:
            record = await self._controller.pull(source, name, actor=actor, runtime=runtime, on_progress=emit)
            if node is None:
                return {"model": version_json(record)}
            emit(Progress(f"copying its files to node {node}"))
            copied = await self._controller.copy_to_node(record.name, node, actor=actor)
            return {"model": version_json(record), "node": copied}

        params = {"source": source, "name": name, **({"node": node} if node else {})}
        job = await self._jobs.submit("pull", name or source, work, actor=actor, params=params)
        return await self._answer(request, body, job)

    async def move(self, request: web.Request) -> web.StreamResponse:
        """Move a version's files to a storage root (``to``: ``home``, a declared root's name or exact
        path), as a job like ``pull``. A missing version (404) or a ``to`` that is no usable root (400,
        listing the valid ones) is answered before any job starts."""
        body = await read_json(request)
        name, to = _text(body, "name", required=True), _text(body, "to", required=True)
        await self._controller.move_destination(name, to)
        actor = actor_of(request)

        async def work(emit: Any) -> dict[str, Any]:
            record, result = await self._controller.move(name, to, actor=actor, on_progress=emit)
            return {"model": version_json(record), **move_json(result)}

        job = await self._jobs.submit("move", name, work, actor=actor, params={"to": to})
        return await self._answer(request, body, job)

    async def _answer(self, request: web.Request, body: dict[str, Any], job: JobRecord) -> web.StreamResponse:
        if body.get("background") is True:
            return _json(job_json(job), status=202)
        if body.get("stream", True) is False:
            done = await self._jobs.wait(job.id)
            if done.error:
                kept = _kept_error(done)
                error = {
                    "message": done.error,
                    "type": kept.get("type") or "job_failed",
                    "param": None,
                    "code": kept.get("code") or str(done.state),
                }
                return _json({"error": error, "job": done.id}, status=_status(done))
            return _json({"status": "success", "job": done.id, **done.result})
        return await _stream(request, self._jobs.watch(job.id, keepalive=KEEPALIVE), job.id)

    async def list(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            raise InvalidRequest("'limit' must be an integer", param="limit") from None
        return _json({"jobs": [job_json(j) for j in await self._jobs.list(limit=limit)]})

    async def show(self, request: web.Request) -> web.Response:
        return _json(job_json(await self._jobs.get(request.match_info["id"])))

    async def watch(self, request: web.Request) -> web.StreamResponse:
        job = await self._jobs.get(request.match_info["id"])
        return await _stream(request, self._jobs.watch(job.id, keepalive=KEEPALIVE), job.id)

    async def cancel(self, request: web.Request) -> web.Response:
        return _json(job_json(await self._jobs.cancel(request.match_info["id"])))


async def _stream(
    request: web.Request, events: AsyncIterator[dict[str, Any]], job_id: str
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "X-Job-Id": job_id})
    await response.prepare(request)
    async for event in events:
        await response.write(orjson.dumps(event) + b"\n")
    await response.write_eof()
    return response


def _text(body: dict[str, Any], key: str, *, required: bool = False) -> Any:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{key}' must be a non-empty string", param=key)
    return value


def _kept_error(job: JobRecord) -> dict[str, Any]:
    kept = job.result.get("error")
    return kept if isinstance(kept, dict) else {}


def _status(job: JobRecord) -> int:
    if str(job.state) == "cancelled":
        return 499
    status = _kept_error(job).get("status")
    return status if isinstance(status, int) and status >= 400 else 400
