"""The asynchronous client's resource groups for the admin API's models, jobs, deployments,
connections and keys: each method is one route, marked with ``@route``.

Its synchronous twin is generated from this file by ``scripts/unasync.py`` (edit this one, then
run it; a unit test fails when the two differ).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from superollama.client._async_transport import AsyncResource
from superollama.client._common import ADMIN, MOVE_TIMEOUT, flag, quote_name, route, without_none
from superollama.client.types import (
    ApplyReport,
    Connection,
    Deleted,
    Deployment,
    Instance,
    IssuedKey,
    Job,
    JSONObject,
    Key,
    Progress,
    Rollout,
    StorageRoot,
    Version,
    VersionDetails,
)

__all__ = [
    "AsyncConnections",
    "AsyncDeployments",
    "AsyncFleet",
    "AsyncInstances",
    "AsyncJobs",
    "AsyncKeys",
    "AsyncModels",
    "AsyncRollouts",
    "AsyncShadow",
    "AsyncStorage",
]


Targets = Sequence[str | JSONObject]  # "name=weight" strings, or {"name", "weight", "replicas", "role"}


class AsyncModels(AsyncResource):
    """Model versions (``model:tag``): list, inspect, pull, copy, rename, move, enable, disable, delete."""

    @route("GET", ADMIN + "/models")
    async def list(self, *, enabled: bool | None = None, format: str | None = None) -> list[Version]:
        params = {"enabled": flag(enabled), "format": format}
        return cast(list[Version], (await self._t.call("GET", ADMIN + "/models", params=params))["models"])

    @route("GET", ADMIN + "/models/{name}")
    async def get(self, name: str) -> VersionDetails:
        return cast(VersionDetails, await self._t.call("GET", f"{ADMIN}/models/{quote_name(name)}"))

    @route("DELETE", ADMIN + "/models/{name}")
    async def delete(self, name: str, *, force: bool = False) -> JSONObject:
        """``{"deleted": name, "cut": N}``: N requests in flight were cut short (with ``force``)."""
        params = {"force": flag(force)}
        return cast(
            JSONObject, await self._t.call("DELETE", f"{ADMIN}/models/{quote_name(name)}", params=params)
        )

    @route("POST", ADMIN + "/models/{name}/enable")
    async def enable(self, name: str) -> Version:
        return cast(Version, await self._t.call("POST", f"{ADMIN}/models/{quote_name(name)}/enable"))

    @route("POST", ADMIN + "/models/{name}/disable")
    async def disable(self, name: str) -> Version:
        return cast(Version, await self._t.call("POST", f"{ADMIN}/models/{quote_name(name)}/disable"))

    @route("POST", ADMIN + "/models/{name}/unload")
    async def unload(self, name: str) -> bool:
        """Stop a version's instances now; False when none was running."""
        answer = await self._t.call("POST", f"{ADMIN}/models/{quote_name(name)}/unload")
        return bool(answer["unloaded"])

    @route("POST", ADMIN + "/copy")
    async def copy(self, source: str, destination: str, *, runtime: str | None = None) -> Version:
        """``runtime``: serve the copy with another runtime (a LoRA adapter's GGUF on llamacpp)."""
        body = {"source": source, "destination": destination, **({"runtime": runtime} if runtime else {})}
        return cast(Version, await self._t.call("POST", ADMIN + "/copy", json=body))

    @route("POST", ADMIN + "/rename")
    async def rename(self, source: str, destination: str) -> Version:
        body = {"source": source, "destination": destination}
        return cast(Version, await self._t.call("POST", ADMIN + "/rename", json=body))

    @route("POST", ADMIN + "/pull")
    async def pull(
        self, source: str, *, name: str | None = None, runtime: str | None = None, node: str | None = None
    ) -> AsyncIterator[Progress]:
        """Pull ``source`` (hf://, ollama://, https://, file://): its progress until the job ends; the
        first line names the job (``job``), the last has ``status`` ``success`` (and ``model``) or
        ``error``. Leaving the loop early does not cancel the job: ``jobs.cancel`` does. ``node``: also
        copy its files to that node's own store (``serve --cluster``), so that it starts there at once."""
        body = without_none(source=source, name=name, runtime=runtime, node=node, stream=True)
        async for line in self._t.lines("POST", ADMIN + "/pull", json=body):
            yield cast(Progress, line)

    @route("POST", ADMIN + "/pull")
    async def start_pull(
        self, source: str, *, name: str | None = None, runtime: str | None = None, node: str | None = None
    ) -> Job:
        """Start a pull in the background: the job, to follow with ``jobs.watch`` or ``jobs.get``."""
        body = without_none(source=source, name=name, runtime=runtime, node=node, background=True)
        return cast(Job, await self._t.call("POST", ADMIN + "/pull", json=body))

    @route("POST", ADMIN + "/move")
    async def move(self, name: str, to: str) -> AsyncIterator[Progress]:
        """Move a version's files to the storage root ``to`` while it serves: progress, then a last line
        with ``root``, ``path``, ``from`` and ``unchanged``."""
        async for line in self._t.lines(
            "POST", ADMIN + "/move", json={"name": name, "to": to, "stream": True}
        ):
            yield cast(Progress, line)

    @route("POST", ADMIN + "/move")
    async def start_move(self, name: str, to: str) -> Job:
        body = {"name": name, "to": to, "background": True}
        return cast(Job, await self._t.call("POST", ADMIN + "/move", json=body))


class AsyncInstances(AsyncResource):
    @route("GET", ADMIN + "/instances")
    async def list(self) -> list[Instance]:
        """The running instances (``superollama ps``)."""
        return cast(list[Instance], (await self._t.call("GET", ADMIN + "/instances"))["instances"])

    @route("POST", ADMIN + "/instances/move")
    async def move(self, name: str, node: str, *, instance: str | None = None) -> JSONObject:
        """Move a running instance of version ``name`` to ``node`` (``serve --cluster``): the new one is
        ready before the old one drains and stops. The answer names both, with the seconds it took. The
        call lasts as long as the old instance's requests (the server's drain bound), so it waits up to
        ``MOVE_TIMEOUT``."""
        body = without_none(name=name, node=node, instance=instance)
        answer = await self._t.call("POST", ADMIN + "/instances/move", json=body, timeout=MOVE_TIMEOUT)
        return cast(JSONObject, answer)


class AsyncStorage(AsyncResource):
    @route("GET", ADMIN + "/storage")
    async def list(self) -> list[StorageRoot]:
        """The storage roots: the home and the declared ones, with free space and versions."""
        return cast(list[StorageRoot], (await self._t.call("GET", ADMIN + "/storage"))["roots"])


class AsyncJobs(AsyncResource):
    """Long operations (pulls, moves)."""

    @route("GET", ADMIN + "/jobs")
    async def list(self, *, limit: int | None = None) -> list[Job]:
        return cast(list[Job], (await self._t.call("GET", ADMIN + "/jobs", params={"limit": limit}))["jobs"])

    @route("GET", ADMIN + "/jobs/{id}")
    async def get(self, job_id: str) -> Job:
        return cast(Job, await self._t.call("GET", f"{ADMIN}/jobs/{quote_name(job_id)}"))

    @route("GET", ADMIN + "/jobs/{id}/watch")
    async def watch(self, job_id: str) -> AsyncIterator[Progress]:
        """A job's progress until it ends (its latest line first)."""
        async for line in self._t.lines("GET", f"{ADMIN}/jobs/{quote_name(job_id)}/watch"):
            yield cast(Progress, line)

    @route("POST", ADMIN + "/jobs/{id}/cancel")
    async def cancel(self, job_id: str) -> Job:
        return cast(Job, await self._t.call("POST", f"{ADMIN}/jobs/{quote_name(job_id)}/cancel"))


class AsyncDeployments(AsyncResource):
    """Deployments: a routable name over weighted targets (versions or connection models)."""

    @route("GET", ADMIN + "/deployments")
    async def list(self) -> list[Deployment]:
        return cast(list[Deployment], (await self._t.call("GET", ADMIN + "/deployments"))["deployments"])

    @route("GET", ADMIN + "/deployments/{name}")
    async def get(self, name: str) -> Deployment:
        return cast(Deployment, await self._t.call("GET", f"{ADMIN}/deployments/{quote_name(name)}"))

    @route("PUT", ADMIN + "/deployments/{name}")
    async def put(
        self, name: str, targets: Targets, *, stage: str | None = None, sticky: str | None = None
    ) -> Deployment:
        """Create or change a deployment: new versions start and pass checks before traffic moves."""
        body = without_none(targets=list(targets), stage=stage, sticky=sticky)
        path = f"{ADMIN}/deployments/{quote_name(name)}"
        return cast(Deployment, await self._t.call("PUT", path, json=body, idempotent=True))

    @route("DELETE", ADMIN + "/deployments/{name}")
    async def delete(self, name: str) -> Deleted:
        return cast(Deleted, await self._t.call("DELETE", f"{ADMIN}/deployments/{quote_name(name)}"))

    @route("POST", ADMIN + "/deployments/{name}/split")
    async def split(self, name: str, targets: Targets, *, sticky: str | None = None) -> Deployment:
        body = {"targets": list(targets), "sticky": sticky}
        return cast(
            Deployment, await self._t.call("POST", f"{ADMIN}/deployments/{quote_name(name)}/split", json=body)
        )

    @route("POST", ADMIN + "/deployments/{name}/scale")
    async def scale(self, name: str, target: str, replicas: int) -> Deployment:
        """Run ``replicas`` instances of one target (new ones join when ready; a surplus drains)."""
        path = f"{ADMIN}/deployments/{quote_name(name)}/scale"
        body = {"target": target, "replicas": replicas}
        return cast(Deployment, await self._t.call("POST", path, json=body, idempotent=True))

    @route("POST", ADMIN + "/deployments/{name}/promote")
    async def promote(self, name: str, *, to: str | None = None) -> Deployment:
        path = f"{ADMIN}/deployments/{quote_name(name)}/promote"
        return cast(Deployment, await self._t.call("POST", path, json=without_none(to=to)))

    @route("POST", ADMIN + "/deployments/{name}/rollback")
    async def rollback(self, name: str) -> Deployment:
        return cast(
            Deployment, await self._t.call("POST", f"{ADMIN}/deployments/{quote_name(name)}/rollback")
        )

    @route("POST", ADMIN + "/deployments/{name}/pause")
    async def pause(self, name: str) -> Deployment:
        return cast(Deployment, await self._t.call("POST", f"{ADMIN}/deployments/{quote_name(name)}/pause"))

    @route("POST", ADMIN + "/deployments/{name}/resume")
    async def resume(self, name: str) -> Deployment:
        return cast(Deployment, await self._t.call("POST", f"{ADMIN}/deployments/{quote_name(name)}/resume"))


class AsyncRollouts(AsyncResource):
    """Progressive rollouts of a deployment to a new version (canary, steps, automatic checks)."""

    @route("POST", ADMIN + "/deployments/{name}/rollout")
    async def start(self, name: str, to: str, **policy: Any) -> Rollout:
        """``policy``: canary, step, every, max_error_rate, max_p95_latency, min_samples."""
        path = f"{ADMIN}/deployments/{quote_name(name)}/rollout"
        return cast(Rollout, await self._t.call("POST", path, json={"to": to, **without_none(**policy)}))

    @route("GET", ADMIN + "/deployments/{name}/rollout")
    async def get(self, name: str) -> Rollout:
        return cast(Rollout, await self._t.call("GET", f"{ADMIN}/deployments/{quote_name(name)}/rollout"))

    @route("POST", ADMIN + "/deployments/{name}/rollout/abort")
    async def abort(self, name: str) -> Rollout:
        return cast(
            Rollout, await self._t.call("POST", f"{ADMIN}/deployments/{quote_name(name)}/rollout/abort")
        )


class AsyncShadow(AsyncResource):
    """Shadow traffic: a share of a deployment's requests mirrored to another target, answers compared."""

    @route("PUT", ADMIN + "/deployments/{name}/shadow")
    async def set(self, name: str, to: str, *, percent: int = 5) -> JSONObject:
        path = f"{ADMIN}/deployments/{quote_name(name)}/shadow"
        body = {"to": to, "percent": percent}
        return cast(JSONObject, await self._t.call("PUT", path, json=body, idempotent=True))

    @route("DELETE", ADMIN + "/deployments/{name}/shadow")
    async def off(self, name: str) -> JSONObject:
        path = f"{ADMIN}/deployments/{quote_name(name)}/shadow"
        return cast(JSONObject, await self._t.call("DELETE", path, idempotent=True))

    @route("GET", ADMIN + "/deployments/{name}/shadow")
    async def get(self, name: str, *, last: int | None = None) -> JSONObject:
        """The comparison so far, with the ``last`` samples."""
        path = f"{ADMIN}/deployments/{quote_name(name)}/shadow"
        return cast(JSONObject, await self._t.call("GET", path, params={"last": last}))


class AsyncFleet(AsyncResource):
    """The fleet as one file: models, connections, deployments and keys."""

    @route("POST", ADMIN + "/apply")
    async def apply(self, spec: JSONObject, *, dry_run: bool = False, prune: bool = False) -> ApplyReport:
        body = {"spec": spec, "dry_run": dry_run, "prune": prune}
        return cast(ApplyReport, await self._t.call("POST", ADMIN + "/apply", json=body))

    @route("GET", ADMIN + "/export")
    async def export(self) -> JSONObject:
        return cast(JSONObject, await self._t.call("GET", ADMIN + "/export"))


class AsyncConnections(AsyncResource):
    """External servers whose models are routable (Ollama, vLLM, TGI, OpenAI-compatible)."""

    @route("GET", ADMIN + "/connections")
    async def list(self) -> list[Connection]:
        return cast(list[Connection], (await self._t.call("GET", ADMIN + "/connections"))["connections"])

    @route("POST", ADMIN + "/connections")
    async def add(
        self,
        kind: str,
        url: str,
        *,
        name: str | None = None,
        api_key: str | None = None,
        options: JSONObject | None = None,
    ) -> Connection:
        body = without_none(kind=kind, url=url, name=name, api_key=api_key, options=options)
        return cast(Connection, await self._t.call("POST", ADMIN + "/connections", json=body))

    @route("GET", ADMIN + "/connections/{name}")
    async def get(self, name: str) -> Connection:
        return cast(Connection, await self._t.call("GET", f"{ADMIN}/connections/{quote_name(name)}"))

    @route("DELETE", ADMIN + "/connections/{name}")
    async def delete(self, name: str) -> Deleted:
        return cast(Deleted, await self._t.call("DELETE", f"{ADMIN}/connections/{quote_name(name)}"))

    @route("POST", ADMIN + "/connections/{name}/refresh")
    async def refresh(self, name: str) -> Connection:
        return cast(Connection, await self._t.call("POST", f"{ADMIN}/connections/{quote_name(name)}/refresh"))

    @route("POST", ADMIN + "/connections/{name}/enable")
    async def enable(self, name: str) -> Connection:
        return cast(Connection, await self._t.call("POST", f"{ADMIN}/connections/{quote_name(name)}/enable"))

    @route("POST", ADMIN + "/connections/{name}/disable")
    async def disable(self, name: str) -> Connection:
        return cast(Connection, await self._t.call("POST", f"{ADMIN}/connections/{quote_name(name)}/disable"))

    @route("POST", ADMIN + "/connections/{name}/pull")
    async def pull(self, name: str, model: str) -> AsyncIterator[Progress]:
        """Pull ``model`` onto the connected server (an Ollama): its progress, as Ollama reports it."""
        path = f"{ADMIN}/connections/{quote_name(name)}/pull"
        async for line in self._t.lines("POST", path, json={"model": model}):
            yield cast(Progress, line)

    @route("POST", ADMIN + "/connections/{name}/copy")
    async def copy(self, name: str, source: str, destination: str) -> Connection:
        body = {"source": source, "destination": destination}
        return cast(
            Connection, await self._t.call("POST", f"{ADMIN}/connections/{quote_name(name)}/copy", json=body)
        )

    @route("DELETE", ADMIN + "/connections/{name}/models/{model}")
    async def delete_model(self, name: str, model: str) -> Connection:
        path = f"{ADMIN}/connections/{quote_name(name)}/models/{quote_name(model)}"
        return cast(Connection, await self._t.call("DELETE", path))


class AsyncKeys(AsyncResource):
    """API keys: roles, model scopes, limits, budgets. A secret is shown once, at create or rotate."""

    @route("GET", ADMIN + "/keys")
    async def list(self) -> list[Key]:
        return cast(list[Key], (await self._t.call("GET", ADMIN + "/keys"))["keys"])

    @route("POST", ADMIN + "/keys")
    async def create(self, name: str, **fields: Any) -> IssuedKey:
        """``fields``: role, models, rpm, tpm, model_limits, budget_usd, budget_period, expires_in,
        expires_at (as the admin API takes them)."""
        return cast(
            IssuedKey,
            await self._t.call("POST", ADMIN + "/keys", json={"name": name, **without_none(**fields)}),
        )

    @route("GET", ADMIN + "/keys/{ident}")
    async def get(self, ident: str) -> Key:
        """A key by id, name or prefix, with its spend this period."""
        return cast(Key, await self._t.call("GET", f"{ADMIN}/keys/{quote_name(ident)}"))

    @route("POST", ADMIN + "/keys/{ident}/revoke")
    async def revoke(self, ident: str) -> Key:
        return cast(Key, await self._t.call("POST", f"{ADMIN}/keys/{quote_name(ident)}/revoke"))

    @route("POST", ADMIN + "/keys/{ident}/rotate")
    async def rotate(self, ident: str) -> IssuedKey:
        return cast(IssuedKey, await self._t.call("POST", f"{ADMIN}/keys/{quote_name(ident)}/rotate"))
