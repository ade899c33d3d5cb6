"""Lifecycle use cases (pull, remove, enable, disable, show, list) and the routing snapshot publisher.

The admin API, the CLI's offline mode and the gateway's scale-from-zero all go through this one class,
so every path shares the same rules and writes the same events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from superollama.agent import CopiesVersions, LiveInstance, MovesInstances, NodeAgent
from superollama.control.connections import ConnectionManager
from superollama.control.placement import NO_CONSTRAINT, wanted
from superollama.control.routing import Route, RouteTarget, RoutingHolder, RoutingTable
from superollama.core import Artifact, EventRecord, ModelRef, NameError_, Progress, VersionRecord
from superollama.core.deployments import VersionScale
from superollama.core.images import capabilities_of
from superollama.core.placement import PlacementConstraint
from superollama.core.routing import Deployment
from superollama.core.waits import wait_set
from superollama.errors import (
    Conflict,
    InvalidModelName,
    LoadTimeout,
    ModelExists,
    ModelInUse,
    ModelLoadFailed,
    ModelNotFound,
    NotFound,
    SuperOllamaError,
    Unavailable,
)
from superollama.registry import Registry
from superollama.store import ModelStore, MoveResult, StorageRoot

__all__ = ["Controller", "VersionDetails", "parse_name"]

log = logging.getLogger("superollama.control")

# Which runtime serves which artifact format when a version names none (the app refines it per node:
# safetensors go to vLLM where it is installed and a GPU is present).
_NO_DEADLINE = 24 * 3600.0


def parse_name(name: str) -> ModelRef:
    try:
        return ModelRef.parse(name)
    except NameError_ as exc:
        raise InvalidModelName(str(exc), param="model") from exc


@dataclass(frozen=True)
class VersionDetails:
    """Everything ``show`` prints about a version."""

    version: VersionRecord
    layers: list[dict[str, Any]]
    instances: list[LiveInstance]
    storage_root: str = "home"  # the name of the storage root holding its files


class Controller:
    def __init__(
        self,
        registry: Registry,
        store: ModelStore,
        holder: RoutingHolder,
        agent: NodeAgent | None = None,
        connections: ConnectionManager | None = None,
    ) -> None:
        self._connections = connections
        self._registry = registry
        self._store = store
        self._holder = holder
        self._agent = agent
        self._versions: dict[str, VersionRecord] = {}
        self._retiring: set[str] = set()  # versions being removed: out of routing, not started again
        self._background: set[asyncio.Task[bool]] = set()
        self._reloading = asyncio.Lock()
        self._generation = 0
        self._deployments: Callable[[], Iterable[Deployment]] = tuple
        self._planned: Callable[[], Iterable[Deployment]] = tuple  # + a change in progress (its swap)
        self._replicas: dict[str, int] = {}  # by version: the most replicas a deployment target asks for
        self._placements: dict[str, PlacementConstraint] = {}  # by version: where its instances may run
        self._scales: dict[str, VersionScale] = {}  # versions scaled by themselves (``scale VERSION``)
        self._gates: dict[str, asyncio.Event] = {}  # versions whose load waits for another to stop
        self._gate_waiters = 0
        self._gate_timeout = 120.0
        self._gate_queue = 512

    @property
    def registry(self) -> Registry:
        return self._registry

    @property
    def agent(self) -> NodeAgent | None:
        return self._agent

    @property
    def holder(self) -> RoutingHolder:
        return self._holder

    def use_deployments(
        self,
        source: Callable[[], Iterable[Deployment]],
        *,
        gate_timeout: float,
        gate_queue: int,
        planned: Callable[[], Iterable[Deployment]] | None = None,
    ) -> None:
        """Publish ``source()``'s deployments in every snapshot; requests held at a gate (``hold_loads``)
        wait at most ``gate_timeout`` s, at most ``gate_queue`` of them at once (then 503 busy).
        ``planned()``: the same with a change in progress, whose swap starts instances before it is
        published (their replicas and placement come from it)."""
        self._deployments = source
        self._planned = planned or source
        self._gate_timeout, self._gate_queue = gate_timeout, gate_queue

    def hold_loads(self, version: str) -> asyncio.Event:
        """Until the returned event is set, a request that needs ``version`` started waits (bounded)
        instead of starting it: a swap that must stop the old instance before the new one fits."""
        gate = self._gates.setdefault(version, asyncio.Event())
        return gate

    def release_loads(self, version: str) -> None:
        gate = self._gates.pop(version, None)
        if gate is not None:
            gate.set()

    async def start(self) -> None:
        if self._agent is not None:
            self._agent.subscribe(self.republish)
        if self._connections is not None:
            self._connections.subscribe(self.republish)
        await self.refresh()

    async def refresh(self) -> None:
        """Reload the catalog from the registry and publish a new snapshot (after every change). The
        change feed reloads while this gateway's own changes do: one at a time, so an older read never
        replaces a newer one."""
        async with self._reloading:
            self._versions = {v.name: v for v in await self._registry.versions.list()}
            self.republish()

    async def reload(self) -> None:
        """The change feed's reload: the catalog changed (through another gateway, or this one). Refresh,
        then stop this node's instances of versions removed, renamed or disabled, in the background and
        without a deadline: they are out of routing already, their requests in flight finish, idle ones
        stop at once (an unload this gateway started itself is not started twice)."""
        await self.refresh()
        if self._agent is None:
            return
        for inst in self._agent.instances():
            version = self._versions.get(inst.version)
            if inst.state == "ready" and (version is None or not version.enabled):
                why = "gone from the catalog" if version is None else "disabled"
                unload = self._agent.unload(inst.version, reason=why, drain=_NO_DEADLINE)
                task = asyncio.create_task(unload)
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    def republish(self) -> None:
        routes = self._connections.routes() if self._connections is not None else []
        deployments = list(self._deployments())
        self._replicas, self._placements = wanted(self._planned(), self._scales.values())
        for v in self._versions.values():
            if v.name in self._retiring:
                continue
            of = self._agent.instances_of(v.name) if self._agent else []
            targets = tuple(RouteTarget(i.id, i.handle.endpoint) for i in of if i.state == "ready")
            created = int(v.created_at.timestamp()) if v.created_at else 0
            routes.append(Route(v.name, v.name, v.enabled, created, targets, capabilities_of(v.metadata)))
        self._generation += 1
        self._holder.publish(RoutingTable.build(routes, self._generation, deployments))

    def replicas_for(self, version: str) -> int:
        """How many instances of ``version`` its deployments want (the most any target asks; 1)."""
        return self._replicas.get(version, 1)

    def placement_for(self, version: str) -> PlacementConstraint:
        """Where ``version``'s instances may run (``control/placement.py``: its own scale's constraint, else
        its deployment targets'); the empty constraint when nothing asks."""
        return self._placements.get(version, NO_CONSTRAINT)

    def use_scales(self, scales: Iterable[VersionScale]) -> None:
        """The versions scaled by themselves (``scale VERSION --replicas N``), as the registry has them."""
        self._scales = {s.version: s for s in scales}

    # -- use cases -------------------------------------------------------------------------------
    async def pull(
        self,
        source: str,
        name: str | None = None,
        *,
        actor: str = "api",
        runtime: str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> VersionRecord:
        ref = parse_name(name or _name_from_source(source))
        existing = await self._registry.versions.find(str(ref))
        try:
            if existing is not None:
                return await self._pull_existing(existing, source, actor, on_progress)
            manifest = await self._store.pull(source, ref, on_progress=on_progress)
        except SuperOllamaError as exc:
            await self._event(
                "model.pull", str(ref), actor, "failed", {"source": source, "error": exc.message}
            )
            raise
        record = VersionRecord(
            name=str(ref),
            model=ref.family,
            tag=ref.tag,
            format=manifest.format,
            digest=manifest.model_layer.digest,
            size=manifest.size,
            source=manifest.source or source,
            metadata=dict(manifest.metadata),
            runtime=runtime,
        )
        try:
            await self._registry.versions.add(record)
        except BaseException:
            await self._store.remove(ref)  # no half model: the catalog and the store agree
            raise
        await self._event("model.pull", str(ref), actor, "ok", {"source": source, "digest": record.digest})
        await self.refresh()
        return await self._registry.versions.get(str(ref))

    async def add_folder(
        self,
        name: str,
        files: Mapping[str, Path],
        *,
        format: str,
        metadata: Mapping[str, Any],
        source: str,
        actor: str = "api",
    ) -> VersionRecord:
        """A version made on this node (a fine-tuned adapter: ``files`` by their name in its folder) into
        the store and the catalog, routable at once; ``ModelExists`` if the name is taken."""
        ref = parse_name(name)
        if await self._registry.versions.find(str(ref)) is not None:
            raise ModelExists(f"model '{ref}' already exists", param="model")
        manifest = await self._store.add_folder(ref, files, format=format, metadata=metadata, source=source)
        record = VersionRecord(
            name=str(ref),
            model=ref.family,
            tag=ref.tag,
            format=manifest.format,
            digest=manifest.model_layer.digest,
            size=manifest.size,
            source=source,
            metadata=dict(manifest.metadata),
        )
        try:
            await self._registry.versions.add(record)
        except BaseException:
            await self._store.remove(ref)
            raise
        await self._event("model.create", str(ref), actor, "ok", {"source": source})
        await self.refresh()
        return await self._registry.versions.get(str(ref))

    async def _pull_existing(
        self,
        existing: VersionRecord,
        source: str,
        actor: str,
        on_progress: Callable[[Progress], None] | None,
    ) -> VersionRecord:
        """Versions are immutable: the same files again is a no-op, other files under the name a 409."""
        plan = await self._store.source_for(source).resolve(source)
        if existing.digest not in {f.digest for f in plan.files}:
            raise ModelExists(
                f"{existing.name} already exists with other files; versions are immutable: "
                "remove it first or pull under another tag"
            )
        if on_progress is not None:
            on_progress(Progress(f"{existing.name} is up to date"))
        await self._event("model.pull", existing.name, actor, "ok", {"source": source, "unchanged": True})
        return existing

    async def copy(
        self, source: str, destination: str, *, actor: str = "api", runtime: str | None = None
    ) -> VersionRecord:
        """A new name on the same blobs (no bytes copied); enabled, routable at once; ``runtime``: the copy
        is served by that runtime (e.g. an adapter by llama.cpp rather than transformers)."""
        version = await self._get(source)
        dst = parse_name(destination)
        if await self._registry.versions.find(str(dst)) is not None:
            raise ModelExists(f"model '{dst}' already exists", param="destination")
        await self._store.copy(ModelRef.parse(version.name), dst)
        record = replace(version, name=str(dst), model=dst.family, tag=dst.tag, enabled=True, created_at=None)
        if runtime is not None:
            record = replace(record, runtime=runtime)
        try:
            await self._registry.versions.add(record)
        except BaseException:
            await self._store.remove(dst)
            raise
        await self._event("model.copy", str(dst), actor, "ok", {"from": version.name})
        await self.refresh()
        return await self._registry.versions.get(str(dst))

    async def rename(self, old: str, new: str, *, actor: str = "api") -> VersionRecord:
        """Move a version to a new name. A running instance of the old name drains (its in-flight
        requests finish) and stops; the new name loads on its next request."""
        version = await self._get(old)
        dst = parse_name(new)
        if await self._registry.versions.find(str(dst)) is not None:
            raise ModelExists(f"model '{dst}' already exists", param="destination")
        await self._store.copy(ModelRef.parse(version.name), dst)
        try:
            record = await self._registry.versions.rename(version.name, str(dst))
        except BaseException:
            await self._store.remove(dst)
            raise
        await self._store.remove(ModelRef.parse(version.name))  # the blobs stay: dst references them
        await self._event("model.rename", str(dst), actor, "ok", {"from": version.name})
        await self.refresh()
        if self._agent is not None:  # drains in the background: the rename itself is done
            # no deadline: a rename never cuts a request short (idle instances stop at once)
            unload = self._agent.unload(version.name, reason=f"renamed to {dst}", drain=_NO_DEADLINE)
            task = asyncio.create_task(unload)
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return record

    async def move_destination(self, name: str, to: str) -> StorageRoot:
        """The storage root a move of ``name`` to ``to`` would use, checked now: ``ModelNotFound`` or
        ``InvalidRequest`` (listing the valid roots) before any job starts."""
        await self._get(name)
        return await asyncio.to_thread(self._store.roots.resolve, to)

    async def move(
        self,
        name: str,
        to: str,
        *,
        actor: str = "api",
        on_progress: Callable[[Progress], None] | None = None,
    ) -> tuple[VersionRecord, MoveResult]:
        """Move a version's files to the storage root ``to`` (``home``, a declared root's name or path) on
        this node; it keeps serving throughout, and the versions sharing its files stay where they are."""
        version = await self._get(name)
        t0 = time.perf_counter()
        try:
            result = await self._store.move(ModelRef.parse(version.name), to, on_progress=on_progress)
        except SuperOllamaError as exc:
            await self._event("model.move", version.name, actor, "failed", {"to": to, "error": exc.message})
            raise
        detail = {
            "from": result.source,
            "to": result.root.name,
            "path": str(result.root.path),
            "unchanged": result.unchanged,
            "copied": list(result.copied),
            "freed": list(result.freed),
            "kept": list(result.kept),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        await self._event("model.move", version.name, actor, "ok", detail)
        return version, result

    async def storage(self) -> list[tuple[StorageRoot, list[str]]]:
        """Every storage root (checked now) with the versions whose files it holds."""
        roots = await asyncio.to_thread(self._store.roots.all)
        where: dict[str, list[str]] = {root.name: [] for root in roots}
        for manifest in await asyncio.to_thread(self._store.list):
            where.setdefault(self._store.roots.name_of(manifest.storage_root), []).append(manifest.name)
        return [(root, where[root.name]) for root in roots]

    async def remove(self, name: str, *, force: bool = False, actor: str = "api") -> int:
        """Remove a version: its name leaves routing first (new requests get 404), a running instance
        drains (bounded by ``drain_timeout``) and stops, then the registry row and the files go.
        Returns how many requests in flight the drain bound cut short."""
        version = await self._get(name)
        cut = 0
        if self._agent is not None:
            busy = bool(self._agent.instances_of(version.name)) or self._agent.loading(version.name)
            if busy and not force:
                raise ModelInUse(
                    f"{version.name} is loaded; stop it first or pass force to drain and stop it"
                )
            self._retiring.add(version.name)
            try:
                self.republish()
                if busy:
                    cut = await self._agent.stop_version(version.name, reason="removed") or 0
                await self._registry.versions.delete(version.name)
            except BaseException:
                self._retiring.discard(version.name)
                self.republish()
                raise
        else:
            await self._registry.versions.delete(version.name)
        # the model files of the catalog's versions pulled through other gateways (their manifests are in
        # their homes, not here) stay: a storage root shared with them holds theirs too
        others = {
            v.digest
            for v in await self._registry.versions.list()
            if v.name != version.name and not self._store.exists(v.name)
        }
        freed = await self._store.remove(ModelRef.parse(version.name), keep=others)
        detail = {"freed_blobs": sorted(freed), "cut": cut}
        await self._event("model.remove", version.name, actor, "ok", detail)
        await self.refresh()
        self._retiring.discard(version.name)
        return cut

    async def set_enabled(self, name: str, enabled: bool, *, actor: str = "api") -> VersionRecord:
        version = await self._get(name)
        record = await self._registry.versions.set_enabled(version.name, enabled)
        await self.refresh()  # routable or not from this snapshot on
        if not enabled and self._agent is not None:
            await self._agent.unload(version.name, reason="disabled")
        await self._event("model.enable" if enabled else "model.disable", version.name, actor, "ok", {})
        return record

    async def list_versions(
        self, *, enabled: bool | None = None, fmt: str | None = None
    ) -> list[VersionRecord]:
        return await self._registry.versions.list(enabled=enabled, format=fmt)

    async def show(self, name: str) -> VersionDetails:
        version = await self._get(name)
        manifest = self._store.show(ModelRef.parse(version.name))
        layers = [
            {"mediaType": la.media_type, "digest": la.digest, "size": la.size, "filename": la.filename}
            for la in manifest.layers
        ]
        of = self._agent.instances_of(version.name) if self._agent else []
        root = self._store.roots.name_of(manifest.storage_root)
        return VersionDetails(version, layers, of, root)

    def instances(self) -> list[LiveInstance]:
        return self._agent.instances() if self._agent else []

    async def unload(self, name: str, *, actor: str = "api") -> bool:
        version = await self._get(name)
        stopped = self._agent is not None and await self._agent.unload(
            version.name, reason=f"unloaded by {actor}"
        )
        return stopped

    # -- data plane support ----------------------------------------------------------------------
    async def ensure_ready(self, route: Route) -> RouteTarget:
        """Scale from zero: start an instance for the route's version and wait (bounded) until ready."""
        if route.connection is not None:
            raise Unavailable(
                route.unavailable or f"connection {route.connection!r} has no target", retry_after=5
            )
        if self._agent is None:
            raise ModelLoadFailed("this process runs no node agent")
        gate = self._gates.get(route.version)
        if gate is not None:
            await self._wait_at(gate, route.version)
        artifact, runtime = await self._artifact(route.name, route.version)
        inst = await self._agent.ensure(
            artifact,
            runtime,
            replicas=self.replicas_for(route.version),
            placement=self.placement_for(route.version),
        )
        return RouteTarget(inst.id, inst.handle.endpoint)

    async def _artifact(self, name: str, version_name: str) -> tuple[Artifact, str]:
        """The version's files on this node and the runtime that serves them."""
        assert self._agent is not None
        version = self._versions.get(version_name)
        if version is None or version.name in self._retiring or not version.enabled:
            raise ModelNotFound(f"model {name!r} not found", param="model")
        stored = self._files_of(version)
        artifact = Artifact(
            name=version.name,
            format=version.format,
            path=stored.path,
            metadata=self._with_base(version),
            projector=stored.projector,
        )
        runtime = version.runtime or await self._agent.runtime_for(artifact)
        return artifact, runtime

    async def scale(self, version: str, replicas: int, *, start: bool = True) -> list[LiveInstance]:
        """Run ``replicas`` instances of ``version`` on this node (the missing ones started in parallel and
        waited for, the surplus drained); ``start=False``: only if it runs now (else on its next request).
        A clear 409 when memory cannot hold them."""
        if self._agent is None:
            raise ModelLoadFailed("this process runs no node agent")
        artifact, runtime = await self._artifact(version, version)
        placement = self.placement_for(version)
        return await self._agent.scale(artifact, runtime, replicas, start=start, placement=placement)

    async def move_to_node(
        self, name: str, node: str, *, instance: str | None = None, actor: str = "api"
    ) -> dict[str, Any]:
        """Move a running instance of version ``name`` to ``node`` (a cluster's agent only): the new one
        is ready before the old one drains and stops."""
        agent = self._agent
        if not isinstance(agent, MovesInstances):
            raise Conflict(
                "moving an instance to another node needs a cluster (serve --cluster)", param="node"
            )
        version = await self._get(name)
        artifact, runtime = await self._artifact(name, version.name)
        moved = await agent.move_instance(artifact, runtime, node, instance=instance)
        await self._event("instance.move", version.name, actor, "ok", moved)
        return moved

    async def check_copy_node(self, node: str) -> None:
        """The node ``pull --node`` copies to: a cluster's node that is up, or this server's own node on
        one machine (its files are there already); 404 or 409 otherwise, before anything is pulled."""
        agent = self._agent
        if isinstance(agent, CopiesVersions) and agent.several_nodes:
            await agent.check_copy_node(node)
            return
        known = sorted(n.name for n in await self._registry.nodes.list())
        if node not in known:
            raise NotFound(f"node {node!r} not found (nodes: {', '.join(known) or 'none'})", param="node")

    async def copy_to_node(self, name: str, node: str, *, actor: str = "api") -> dict[str, Any]:
        """Version ``name``'s files in ``node``'s own store (a cluster's agent copies them there and
        verifies them); on one machine they are already on its only node."""
        version = await self._get(name)
        artifact, _ = await self._artifact(name, version.name)
        agent = self._agent
        if not (isinstance(agent, CopiesVersions) and agent.several_nodes):
            await self.check_copy_node(node)
            return {"name": node, "path": str(artifact.path), "own_store": False, "seconds": 0.0}
        copied = await agent.copy_to_node(artifact, node)
        await self._event("model.copy_to_node", version.name, actor, "ok", copied)
        return copied

    def _files_of(self, version: VersionRecord) -> Artifact:
        """A version's files on this node: through this home's manifest, or, for a version pulled through
        another gateway, in a storage root both share; else a load error saying how to get them here."""
        try:
            return self._store.artifact(ModelRef.parse(version.name))
        except ModelNotFound:
            shared = self._store.shared_artifact(version)
            if shared is None:
                raise ModelLoadFailed(
                    f"the files of {version.name!r} are not on this gateway's machine: it was pulled through "
                    f"another gateway. Move them to a storage root both declare (SUPEROLLAMA_STORAGE_ROOTS; "
                    f"superollama mv {version.name} --to ROOT) or pull it through this gateway"
                ) from None
            return shared

    def _with_base(self, version: VersionRecord) -> Mapping[str, Any]:
        """An adapter version (``metadata["adapter"]``: a LoRA of ``metadata["base"]``) carries where its
        base's files are on this node (``base_path``, ``base_format``): a runtime loads both."""
        base_name = version.metadata.get("base") if version.metadata.get("adapter") else None
        if not isinstance(base_name, str):
            return version.metadata
        base = self._versions.get(base_name)
        if base is None:
            raise ModelLoadFailed(f"{version.name} is an adapter of {base_name}, which is not in the catalog")
        path = self._store.model_path(ModelRef.parse(base.name))
        return {**version.metadata, "base_path": str(path), "base_format": base.format}

    async def _wait_at(self, gate: asyncio.Event, version: str) -> None:
        if self._gate_waiters >= self._gate_queue:
            raise Unavailable(
                f"server busy: {version} is waiting for a swap; too many requests queued", retry_after=1
            )
        self._gate_waiters += 1
        try:
            if not await wait_set(gate, self._gate_timeout):
                raise LoadTimeout(f"model {version!r} is still waiting for a swap to finish", retry_after=5)
        finally:
            self._gate_waiters -= 1

    async def replace(self, route: Route, failed: str, *, reached: bool) -> RouteTarget | None:
        """A ready target in place of instance ``failed``, which a request could not get an answer from, when
        sending the request again is safe: the instance stopped or crashed and the request never reached
        it (``reached=False``: no connection), or its process crashed (a dead process does not go on with
        a request it read). Waits like a cold start; None when the request must fail instead."""
        if route.connection is not None or self._agent is None:
            return None
        ending = await self._agent.ended(failed)
        if ending == "running" or (reached and ending != "crashed"):
            return None
        log.info("%s: instance %s %s; the request goes to its replacement", route.name, failed, ending)
        return await self.ensure_ready(route)

    # -- helpers ---------------------------------------------------------------------------------
    async def _get(self, name: str) -> VersionRecord:
        ref = parse_name(name)
        return await self._registry.versions.get(str(ref))

    async def events(self, **filters: Any) -> list[EventRecord]:
        return await self._registry.events.list(**filters)

    async def _event(self, action: str, target: str, actor: str, result: str, detail: dict[str, Any]) -> None:
        await self._registry.events.add(
            EventRecord(action=action, target=target, actor=actor, result=result, detail=detail)
        )


def _name_from_source(source: str) -> str:
    """The default version name for a pull: what Ollama would call it.

    ``ollama://llama3:8b`` → ``llama3:8b`` (``library/`` dropped), ``ollama://ns/m:t`` → ``ns/m:t``;
    ``hf://org/repo[@rev][:quant]`` → ``hf.co/org/repo:quant`` (``latest`` without a selector); a file or
    URL → its stem, with characters our grammar refuses replaced.
    """
    scheme, _, rest = source.partition("://")
    if scheme == "ollama" and rest:
        parts = rest.split("/")
        if len(parts) == 3:
            parts = parts[1:]  # drop the registry host
        if parts and parts[0] == "library" and len(parts) == 2:
            parts = parts[1:]
        return "/".join(parts)
    if scheme == "hf" and rest:
        repo, _, selector = rest.partition(":")
        repo = repo.split("@", 1)[0]
        return f"hf.co/{repo}:{selector}" if selector else f"hf.co/{repo}"
    stem = source.rstrip("/").rsplit("/", 1)[-1].split("#", 1)[0]
    for suffix in (".gguf", ".bin", ".safetensors"):
        stem = stem.removesuffix(suffix)
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem.lower()).strip("-.")
    return cleaned or "model"
