"""``/v1/fine_tuning/jobs`` as the OpenAI SDK calls it (``client.fine_tuning.jobs.create``, ``.list``,
``.retrieve``, ``.cancel``, ``.list_events``, ``.checkpoints.list``). A job of another key is a 404, as if
it did not exist; errors are OpenAI's envelope (the gateway's error middleware)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from superollama.errors import InvalidRequest
from superollama.gateway import read_json
from superollama.gateway.exchange import principal_of
from superollama.gateway.responses import json_response as _json
from superollama.plugins.finetune.service import FineTuning
from superollama.registry._finetune import CheckpointRecord, FineTuneEvent, FineTuneRecord

__all__ = ["FineTuningRoutes", "checkpoint_json", "event_json", "job_json"]

_JOBS = "/v1/fine_tuning/jobs"
_ORGANIZATION = "org-superollama"


def _ts(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None


def job_json(job: FineTuneRecord) -> dict[str, Any]:
    hp = job.hyperparameters
    openai = {k: hp.get(k) for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    ours = {k: hp.get(k) for k in ("rank", "alpha", "target_modules", "max_seq_len", "checkpoint_every")}
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": _ts(job.created_at) or 0,
        "finished_at": _ts(job.finished_at),
        "model": job.model,
        "fine_tuned_model": job.fine_tuned_model,
        "organization_id": _ORGANIZATION,
        "status": job.status,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "hyperparameters": {**openai, **ours},
        "method": {"type": "supervised", "supervised": {"hyperparameters": {**openai, **ours}}},
        "trained_tokens": job.trained_tokens,
        "error": dict(job.error) if job.error else None,
        "result_files": [],
        "seed": job.seed,
        "user_provided_suffix": job.suffix,
        "estimated_finish": None,
        "integrations": [],
        "metadata": dict(job.metadata) or None,
    }


def event_json(event: FineTuneEvent) -> dict[str, Any]:
    return {
        "id": f"ftevent-{event.id}",
        "object": "fine_tuning.job.event",
        "created_at": _ts(event.created_at) or 0,
        "level": event.level,
        "message": event.message,
        "type": event.type,
        "data": dict(event.data) if event.data else {},
    }


def checkpoint_json(checkpoint: CheckpointRecord, job: FineTuneRecord) -> dict[str, Any]:
    return {
        "id": checkpoint.id,
        "object": "fine_tuning.job.checkpoint",
        "created_at": _ts(checkpoint.created_at) or 0,
        "fine_tuning_job_id": checkpoint.job_id,
        "fine_tuned_model_checkpoint": f"{job.model}-ft-{job.id.removeprefix('ftjob-')[:8]}:ckpt-step-"
        f"{checkpoint.step}",
        "step_number": checkpoint.step,
        "metrics": dict(checkpoint.metrics),
    }


def _key(request: web.Request) -> str | None:
    principal = principal_of(request)
    return principal.key_id if principal is not None else None


def _limit(request: web.Request, default: int) -> int:
    value = request.query.get("limit")
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise InvalidRequest("limit must be an integer", param="limit") from None
    if not 1 <= n <= 1000:
        raise InvalidRequest("limit must be from 1 to 1000", param="limit")
    return n


def _page(items: Sequence[Mapping[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": list(items),
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }


class FineTuningRoutes:
    def __init__(self, service: FineTuning) -> None:
        self._service = service

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_post(_JOBS, self.create)
        r.add_get(_JOBS, self.list)
        r.add_get(f"{_JOBS}/{{id}}", self.get)
        r.add_post(f"{_JOBS}/{{id}}/cancel", self.cancel)
        r.add_get(f"{_JOBS}/{{id}}/events", self.events)
        r.add_get(f"{_JOBS}/{{id}}/checkpoints", self.checkpoints)

    async def create(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        return _json(job_json(await self._service.create(body, key_id=_key(request))))

    async def list(self, request: web.Request) -> web.Response:
        limit = _limit(request, 20)
        jobs = await self._service.jobs(
            key_id=_key(request), after=request.query.get("after"), limit=limit + 1
        )
        return _json(_page([job_json(j) for j in jobs[:limit]], len(jobs) > limit))

    async def get(self, request: web.Request) -> web.Response:
        return _json(job_json(await self._service.get(request.match_info["id"], key_id=_key(request))))

    async def cancel(self, request: web.Request) -> web.Response:
        return _json(job_json(await self._service.cancel(request.match_info["id"], key_id=_key(request))))

    async def events(self, request: web.Request) -> web.Response:
        limit = _limit(request, 20)
        events = await self._service.events(
            request.match_info["id"], key_id=_key(request), after=request.query.get("after"), limit=limit + 1
        )
        return _json(_page([event_json(e) for e in events[:limit]], len(events) > limit))

    async def checkpoints(self, request: web.Request) -> web.Response:
        limit = _limit(request, 10)
        job_id = request.match_info["id"]
        job = await self._service.get(job_id, key_id=_key(request))
        found = await self._service.checkpoints(
            job_id, key_id=_key(request), after=request.query.get("after"), limit=limit + 1
        )
        return _json(_page([checkpoint_json(c, job) for c in found[:limit]], len(found) > limit))
