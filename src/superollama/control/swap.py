"""Zero-downtime swaps: a version gains traffic only once its instance is ready and warm.

**overlap** (the default when memory allows): start the incoming versions' instances (the runtime's
health check passes inside ``ensure``), send each one warm-up request, then publish the new weights; the
versions that lost their traffic drain afterwards (``retire``: no new requests, in-flight ones finish,
bounded by ``drain_timeout``) and stop. Requests never wait on a load.

**stop-first** (when this node's free memory cannot hold both, or by setting): publish the new weights
with the incoming versions' loads held at a gate, drain and stop the leaving versions, open the gate and
start the incoming ones (no warm-up request there: the queued requests are its first). Requests that
arrive meanwhile wait at the gate, bounded in time and number (then a clear 503 busy), exactly like a
cold start's queue.

How the agent decides about memory: it does not (it starts what it is asked to). So the swap decides
here, from the incoming versions' file sizes (a GGUF's weights are mapped whole; the KV cache and the
runtime add to it: ``_MEMORY_FACTOR``) against the node's available memory now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from superollama.control.controller import Controller
from superollama.core import Endpoint
from superollama.errors import ModelLoadFailed

__all__ = ["SwapPlan", "SwapResult", "Swapper", "Warmup", "http_warmup", "node_available_memory"]

log = logging.getLogger("superollama.deployments")

Warmup = Callable[[Endpoint], Awaitable[None]]
_MEMORY_FACTOR = 1.5
_MEMORY_SLACK = 256 * 1024 * 1024


@dataclass(frozen=True)
class SwapPlan:
    deployment: str
    incoming: list[str]  # versions (or connection models) that gain traffic
    leaving: list[str]  # versions that lose all their traffic (in every deployment)
    replicas: dict[str, int] = field(default_factory=dict)  # incoming versions wanting more than one


@dataclass
class SwapResult:
    mode: str  # "overlap", "stop-first" or "none" (no version of ours gains traffic)
    reason: str
    ready_seconds: float = 0.0  # start + health + warm-up of the incoming instances
    switch_seconds: float = 0.0  # from the change's start to the new weights published
    warmed: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "ready_seconds": round(self.ready_seconds, 3),
            "switch_seconds": round(self.switch_seconds, 3),
            "warmed": self.warmed,
        }


class Swapper:
    def __init__(
        self,
        controller: Controller,
        *,
        mode: str = "auto",
        drain_timeout: float = 60.0,
        warmup: Warmup | None = None,
        available_memory: Callable[[], int] | None = None,
    ) -> None:
        self._controller = controller
        self._mode = mode
        self._drain = drain_timeout
        self._warmup = warmup or http_warmup
        self._available = available_memory or node_available_memory
        self._background: set[asyncio.Task[None]] = set()

    async def run(self, plan: SwapPlan, publish: Callable[[], Awaitable[None]]) -> SwapResult:
        t0 = time.perf_counter()
        ours = [v for v in plan.incoming if self._runs(v)]
        if not ours:
            await publish()
            return SwapResult(
                "none", "no version this node runs gains traffic", 0.0, time.perf_counter() - t0
            )
        mode, reason = await self._choose(ours, plan.leaving)
        if mode == "overlap":
            await self._ready(ours, replicas=plan.replicas)
            ready = time.perf_counter() - t0
            await publish()
            return SwapResult(mode, reason, ready, time.perf_counter() - t0, ours)
        log.warning("%s: %s; stopping %s before starting %s", plan.deployment, reason, plan.leaving, ours)
        for v in ours:
            self._controller.hold_loads(v)
        try:
            await publish()
            switched = time.perf_counter() - t0
            await self._stop(plan.leaving, f"swapped out of {plan.deployment} (stop-first)")
            log.info("%s: %s stopped after %.2f s", plan.deployment, plan.leaving, time.perf_counter() - t0)
        finally:
            for v in ours:
                self._controller.release_loads(v)
        # the requests queued meanwhile are its first ones
        await self._ready(ours, warm=False, replicas=plan.replicas)
        log.info("%s: %s ready after %.2f s", plan.deployment, ours, time.perf_counter() - t0)
        return SwapResult(mode, reason, time.perf_counter() - t0 - switched, switched, ours)

    def retire(self, versions: Iterable[str], deployment: str) -> None:
        """Drain then stop the instances of ``versions`` in the background (bounded by the drain)."""
        leaving = [v for v in versions if self._running(v)]
        if not leaving:
            return
        task = asyncio.create_task(self._stop(leaving, f"swapped out of {deployment}"))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            with contextlib.suppress(Exception):
                await task

    # -- helpers ---------------------------------------------------------------------------------
    async def _choose(self, incoming: list[str], leaving: list[str]) -> tuple[str, str]:
        if self._mode == "overlap":
            return "overlap", "set to overlap"
        running = [v for v in leaving if self._running(v)]
        if self._mode == "stop-first":
            return ("stop-first", "set to stop-first") if running else ("overlap", "nothing to stop first")
        if not running:
            return "overlap", "no leaving instance runs"
        need = 0
        for v in incoming:
            record = await self._controller.registry.versions.find(v)
            need += int((record.size if record else 0) * _MEMORY_FACTOR)
        free = self._available()
        if need + _MEMORY_SLACK <= free:
            return "overlap", f"both fit: about {need >> 20} MiB needed, {free >> 20} MiB free"
        return (
            "stop-first",
            f"memory does not allow both at once: about {need >> 20} MiB needed, {free >> 20} MiB free",
        )

    async def _ready(
        self, versions: list[str], *, warm: bool = True, replicas: dict[str, int] | None = None
    ) -> None:
        """Each version's instances (``replicas``, one by default: started in parallel) started, healthy
        and (``warm``) one request answered by each."""
        for v in versions:
            route = self._controller.holder.table.lookup(v)
            if route is None:
                raise ModelLoadFailed(f"{v} is no longer routable")
            n = (replicas or {}).get(v, 1)
            endpoints = []
            if n > 1:
                endpoints = [i.handle.endpoint for i in await self._controller.scale(v, n)]
            else:
                endpoints = [(await self._controller.ensure_ready(route)).endpoint]
            if warm:
                await asyncio.gather(*(self._warmup(e) for e in endpoints))

    async def _stop(self, versions: list[str], reason: str) -> None:
        agent = self._controller.agent
        if agent is None:
            return
        for v in versions:
            try:
                cut = await agent.stop_version(v, reason=reason, drain=self._drain)
            except Exception:
                log.exception("stopping %s after a swap failed", v)
                continue
            if cut:
                log.warning("%s: the drain bound cut %d request(s) short", v, cut)

    def _runs(self, name: str) -> bool:
        route = self._controller.holder.table.lookup(name)
        return route is not None and route.connection is None and self._controller.agent is not None

    def _running(self, name: str) -> bool:
        agent = self._controller.agent
        return agent is not None and (agent.instance_for(name) is not None or agent.loading(name))


async def http_warmup(endpoint: Endpoint, *, timeout: float = 120.0) -> None:
    """One real request to a new instance before it takes traffic: a one-token chat completion, or an
    embedding for a model that does not chat, or a rerank for a cross-encoder. Any 2xx answer makes it
    warm."""
    if endpoint.provider != "openai":
        return  # the instances we run speak the OpenAI protocol; others have no warm-up yet
    probes = (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
        ("/v1/embeddings", {"input": "warm-up"}),
        ("/v1/rerank", {"query": "warm-up", "documents": ["warm-up"]}),
    )
    headers = dict(endpoint.headers)
    statuses = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        for path, body in probes:
            try:
                async with session.post(
                    endpoint.base_url + path, json={"model": endpoint.served_name, **body}, headers=headers
                ) as response:
                    await response.read()
                    if response.status < 300:
                        return
                    statuses.append(f"{path} {response.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses.append(f"{path} {type(exc).__name__}")
    raise ModelLoadFailed(f"warm-up request failed ({', '.join(statuses)}): no traffic moved to it")


def node_available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)
