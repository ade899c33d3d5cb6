"""The control plane's side of copies to nodes with a store of their own (``cluster/blobs.py`` is the
node's side, ``cluster/folders.py`` the folder versions').

``NodeCopies.place`` gives an instance's artifact as the node it is placed on sees it: on a node with a
store of its own (``SUPEROLLAMA_NODE_STORE``), every file the runtime reads — the model file, a GGUF
projector, a folder version's folder, an adapter's base (and a fine-tune's dequantised base, ``hf_base``,
which no manifest describes: ``folders.derived_folder_plan`` gives it one) — is copied there first and
the paths point there; a node without one reads the control plane's files as they are.

- **A blob** goes from the first source that has it: another node's store (node to node), else the
  control plane's origin (a ``NodeActor`` on this driver's node, owned by it); the node's actor pulls it
  (``fetch_blob``) and verifies it before it is visible. One copy per (node, blob) at a time here.
- **A folder** (``folder_plan``: the version's manifest lists each file's digest) is its files copied
  one by one as blobs (so one blob transfer's memory bound holds), then built on the node in one rename
  (``assemble_folder``). One copy per (node, folder) at a time; a folder already complete there costs
  one call. A file refused (tampered) fails the load with the blob's message and the file's name: no
  folder appears, and the files verified before it stay as blobs for the next try.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from superollama.cluster.blobs import blob_digest
from superollama.cluster.folders import FolderPlan, derived_folder_plan, folder_plan
from superollama.core import Artifact
from superollama.errors import IntegrityError, ModelLoadFailed, StoreError

__all__ = ["NodeCopies", "StoreNode"]

log = logging.getLogger("superollama.cluster")

T = TypeVar("T")

Source = tuple[str, Any, str | None]  # (node name, its NodeActor, the file for a node without a store)


class StoreNode(Protocol):
    """A node as copies see it (``cluster.agent.RayNode``)."""

    @property
    def name(self) -> str: ...
    @property
    def node_id(self) -> str: ...
    @property
    def store_root(self) -> str | None: ...


class NodeCopies:
    """``handle(name, node_id)``: the node's ``NodeActor``; ``nodes()``: the cluster's nodes now (the
    sources); ``node_actor``: the ``ray.remote`` class the origin is made of."""

    def __init__(
        self,
        handle: Callable[[str, str], Awaitable[Any]],
        nodes: Callable[[], Mapping[str, StoreNode]],
        node_actor: Any,
        *,
        timeout: float = 10.0,
        origin_node: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``origin_node``: the Ray node id the origin must run on (None: this driver's node)."""
        self._handle = handle
        self._nodes = nodes
        self._node_actor = node_actor
        self._timeout = timeout
        self._origin_node = origin_node
        self._flights: dict[tuple[str, str], asyncio.Task[Any]] = {}  # by (node name, blob or folder)
        self._origin: Any = None  # the control plane's blob server, made on need
        self._origin_on = ""  # the Ray node id it runs on

    async def place(self, node: StoreNode, artifact: Artifact) -> Artifact:
        """The artifact as ``node`` sees it: its files copied into the node's own store first (when it
        has one), the paths pointing there: a model file, a folder version's folder (``cluster/folders``),
        a GGUF projector, an adapter's base (``base_path``) and the dequantised base a fine-tune of a GGUF
        was trained on (``hf_base``, for the transformers runtime)."""
        if node.store_root is None:
            return artifact
        path = await self._node_place(node, artifact.name, artifact.path)
        projector = None
        if artifact.projector is not None:
            projector = await self._node_copy(node, artifact.name, artifact.projector)
        metadata = artifact.metadata
        base, base_path = metadata.get("base"), metadata.get("base_path")
        if metadata.get("adapter") and isinstance(base, str) and isinstance(base_path, str):
            placed = str(await self._node_place(node, base, Path(base_path)))
            metadata = {**metadata, "base_path": placed}
            hf_base = metadata.get("hf_base")
            if hf_base == base_path:  # a safetensors base: its own folder, just copied
                metadata["hf_base"] = placed
            elif isinstance(hf_base, str) and await asyncio.to_thread(Path(hf_base).is_dir):
                metadata["hf_base"] = await self._derived_folder(node, f"{base} (dequantised)", Path(hf_base))
        return replace(artifact, path=path, projector=projector, metadata=metadata)

    async def _derived_folder(self, node: StoreNode, version: str, folder: Path) -> str:
        """A folder no manifest describes (a fine-tune's dequantised base, ``hf_base``) in ``node``'s
        store: hashed into a manifest of its own first (``folders.derived_folder_plan``, once: one
        planning per folder at a time here), then copied like a folder version."""
        plan = await self._single_flight(("", f"plan:{folder}"), lambda: self._plan_derived(version, folder))
        return await self.ensure_folder(node, plan)

    async def _plan_derived(self, version: str, folder: Path) -> FolderPlan:
        try:
            return await derived_folder_plan(version, folder)
        except (StoreError, OSError) as exc:
            reason = exc.message if isinstance(exc, StoreError) else str(exc)
            raise ModelLoadFailed(f"{version} cannot be copied to a node: {reason}") from None

    async def _node_place(self, node: StoreNode, version: str, path: Path) -> Path:
        """``version``'s file or folder ``path`` (the control plane's) in ``node``'s store."""
        if not await asyncio.to_thread(path.is_dir):
            return await self._node_copy(node, version, path)
        try:
            plan = await asyncio.to_thread(folder_plan, version, path)
        except StoreError as exc:
            raise ModelLoadFailed(f"{version} cannot be copied to node {node.name}: {exc.message}") from None
        return Path(await self.ensure_folder(node, plan))

    async def _node_copy(self, node: StoreNode, version: str, path: Path) -> Path:
        digest = blob_digest(path)
        if digest is None:
            raise ModelLoadFailed(f"{version}: {path} is not a blob of the store")
        return Path(await self.ensure_blob(node, digest, path))

    async def ensure_folder(self, node: StoreNode, plan: FolderPlan) -> str:
        """The folder of ``plan`` in ``node``'s store, its files copied first where missing (one copy
        per node and folder at a time, and per node and blob: concurrent callers share them)."""
        return await self._single_flight(
            (node.name, f"folder:{plan.key}"), lambda: self._copy_folder(node, plan)
        )

    async def _copy_folder(self, node: StoreNode, plan: FolderPlan) -> str:
        target = await self._handle(node.name, node.node_id)
        entries = plan.entries
        have = await asyncio.wait_for(_result(target.folder_local.remote(plan.key, entries)), self._timeout)
        if have is not None:
            return str(have)
        started = time.monotonic()
        report = await asyncio.wait_for(_result(target.blobs.remote()), self._timeout)
        before = int(report.get("transfers") or 0)
        log.info(
            "copying %s (%d files, %d MiB) to node %s",
            plan.version,
            len(plan.files),
            plan.size >> 20,
            node.name,
        )
        for file in plan.files:  # one at a time: one blob transfer's memory bound holds for the folder
            try:
                await self.ensure_blob(node, file.digest, file.origin)
            except ModelLoadFailed as exc:
                raise ModelLoadFailed(f"{exc.message} ({file.path} of {plan.version})") from None
        seconds = time.monotonic() - started
        summary: dict[str, Any] = {"version": plan.version, "seconds": round(seconds, 3)}
        with contextlib.suppress(ray.exceptions.RayError, TimeoutError):
            report = await asyncio.wait_for(_result(target.blobs.remote()), self._timeout)
            summary["transfers"] = int(report.get("transfers") or 0) - before  # blobs that were not there
        try:
            path: str = await asyncio.wait_for(
                _result(target.assemble_folder.remote(plan.key, entries, summary)), self._timeout
            )
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None)
            reason = getattr(cause, "message", None) or str(cause or exc) or type(exc).__name__
            raise ModelLoadFailed(f"node {node.name} could not assemble {plan.version}: {reason}") from None
        log.info(
            "%s on node %s: %d files, %d MiB in %.2f s (%s blob transfers)",
            plan.version,
            node.name,
            len(plan.files),
            plan.size >> 20,
            seconds,
            summary.get("transfers", "?"),
        )
        return path

    async def ensure_blob(self, node: StoreNode, digest: str, origin_path: Path) -> str:
        """The blob's path in ``node``'s store, copied there first if missing (one copy per node and
        blob at a time: concurrent callers share it)."""
        return await self._single_flight(
            (node.name, digest), lambda: self._copy_blob(node, digest, origin_path)
        )

    async def _single_flight(self, key: tuple[str, str], copy: Callable[[], Coroutine[Any, Any, T]]) -> T:
        task = self._flights.get(key)
        if task is None:
            task = asyncio.create_task(copy())
            self._flights[key] = task
            task.add_done_callback(lambda done: self._flight_done(key, done))
        return await asyncio.shield(task)

    def _flight_done(self, key: tuple[str, str], task: asyncio.Task[Any]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()

    async def _copy_blob(self, node: StoreNode, digest: str, origin_path: Path) -> str:
        target = await self._handle(node.name, node.node_id)
        have = await asyncio.wait_for(_result(target.blob_local.remote(digest)), self._timeout)
        size = (await asyncio.to_thread(origin_path.stat)).st_size
        if have is not None and int(have[1]) == size:
            return str(have[0])
        sources = await self._blob_sources(node, digest, origin_path, size)
        log.info(
            "copying blob %s (%d MiB) to node %s from %s",
            digest,
            size >> 20,
            node.name,
            ", ".join(name for name, _, _ in sources),
        )
        ref = target.fetch_blob.remote(digest, size, sources)
        try:
            while True:
                done, _ = await asyncio.to_thread(ray.wait, [ref], timeout=1.0)
                if done:
                    break
                with contextlib.suppress(ray.exceptions.RayError, TimeoutError):
                    report = await asyncio.wait_for(_result(target.blobs.remote()), self._timeout)
                    for item in report.get("in_progress") or []:
                        if item.get("digest") == digest:
                            log.info(
                                "blob %s to %s: %d/%d MiB from %s",
                                digest,
                                node.name,
                                int(item["done"]) >> 20,
                                int(item["total"]) >> 20,
                                item.get("source"),
                            )
            path: str = await _result(ref)
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, IntegrityError):
                raise ModelLoadFailed(f"node {node.name}: {cause.message}") from None
            reason = getattr(cause, "message", None) or str(cause or exc) or type(exc).__name__
            raise ModelLoadFailed(f"node {node.name} could not get blob {digest}: {reason}") from None
        return path

    async def _blob_sources(
        self, target: StoreNode, digest: str, origin_path: Path, size: int
    ) -> list[tuple[str, Any, str | None]]:
        """Where the blob can come from: the other nodes whose own store has it (by name), then the
        control plane's origin."""
        others = [n for n in self._nodes().values() if n.name != target.name and n.store_root is not None]

        async def ask(node: StoreNode) -> tuple[str, Any, str | None] | None:
            try:
                actor = await self._handle(node.name, node.node_id)
                have = await asyncio.wait_for(_result(actor.blob_local.remote(digest)), self._timeout)
            except (ray.exceptions.RayError, TimeoutError):
                return None
            return (node.name, actor, None) if have is not None and int(have[1]) == size else None

        found = [
            s for s in await asyncio.gather(*(ask(n) for n in sorted(others, key=lambda n: n.name))) if s
        ]
        return [*found, ("control plane", await self._origin_actor(), str(origin_path))]

    async def _origin_actor(self) -> Any:
        """The control plane's blob server: a ``NodeActor`` on this driver's node reading its store's
        files, owned by this driver (it ends with it). When the control plane's machine is a new Ray node
        (a head restarted without a control store) the origin is made again there."""
        node_id = self._origin_node() or ray.get_runtime_context().get_node_id()
        if self._origin is None or self._origin_on != node_id:
            self._origin_on = node_id
            self._origin = await asyncio.to_thread(
                lambda: self._node_actor.options(
                    num_cpus=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
                ).remote(origin=True)
            )
        return self._origin


async def _result(ref: Any) -> Any:
    return await ref
