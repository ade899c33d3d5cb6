"""Admin API for nodes (``/admin/v1/nodes``, declared in ``contract/nodes.py``): each node's capacity and
use, with its instances; cordon, uncordon, drain and remove.

A node is a machine with an agent (the registry's ``nodes``). For the node this process runs, the answer
carries what it uses *now* (``usage``: CPU busy share and load, RAM, each GPU's memory — measured by
``agent/inventory.py``) and the tokens per second of its instances' latest answers (as this process's
metrics saw them). A cluster's node (``serve --cluster``) shows what its node actor last reported
(``inventory``, with ``usage`` inside it) and the instances placed there. A node known to the registry
but run by no agent of ours shows what it registered and ``usage: null`` — nothing is made up for it.

Cordon is the node's registry state (``cordoned``; ``draining`` while a drain runs and after it):
placement (``agent/placement.py``) puts nothing new there, and a node's own reports keep it. A drain
cordons, then stops each instance there (drained first, bounded): the next request for its version
places a new one elsewhere. ``rm`` forgets a node with no instance running there (409 otherwise).
``POST …/{name}/labels`` (``{"set": {k: v}, "remove": [k]}``: ``superollama nodes label NODE k=v k-``)
sets a node's labels (``inventory.labels``), which placement matches against a deployment's ``--labels``;
any node, ``local`` included (``agent --join --labels`` sets them at the join). A cluster node's refresh
and a restarted local agent keep them.
Each change is an audit event (``node.cordon``, ``node.uncordon``, ``node.drain``, ``node.remove``,
``node.label``) with
the admin who made it, so the events page and the webhooks see it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from superollama.admin.join import parse_labels
from superollama.admin.routes import PREFIX, actor_of
from superollama.admin.serialize import instance_json
from superollama.agent import LiveInstance
from superollama.control import Controller
from superollama.core import EventRecord, NodeRecord
from superollama.errors import Conflict, InvalidRequest, NotFound
from superollama.gateway import read_json
from superollama.gateway.responses import json_response as _json

__all__ = ["NodeRoutes"]


class NodeRoutes:
    def __init__(
        self,
        controller: Controller,
        node: str,
        tokens_per_second: Callable[[str], float | None] = lambda _: None,
    ) -> None:
        self._controller = controller
        self._node = node
        self._tps = tokens_per_second

    def register(self, app: web.Application) -> None:
        app.router.add_get(f"{PREFIX}/nodes", self.list_nodes)
        app.router.add_get(f"{PREFIX}/nodes/{{name}}", self.show)
        app.router.add_post(f"{PREFIX}/nodes/{{name}}/cordon", self.cordon)
        app.router.add_post(f"{PREFIX}/nodes/{{name}}/uncordon", self.uncordon)
        app.router.add_post(f"{PREFIX}/nodes/{{name}}/drain", self.drain)
        app.router.add_post(f"{PREFIX}/nodes/{{name}}/labels", self.label)
        app.router.add_delete(f"{PREFIX}/nodes/{{name}}", self.remove)

    async def list_nodes(self, request: web.Request) -> web.Response:
        records = await self._records()
        return _json({"nodes": [await self._node_json(records[name]) for name in sorted(records)]})

    async def show(self, request: web.Request) -> web.Response:
        return _json(await self._node_json(await self._record(request)))

    async def cordon(self, request: web.Request) -> web.Response:
        record = await self._set_state(await self._record(request), "cordoned")
        await self._event("node.cordon", record, request)
        return _json(await self._node_json(record))

    async def uncordon(self, request: web.Request) -> web.Response:
        record = await self._set_state(await self._record(request), "ready")
        await self._event("node.uncordon", record, request)
        return _json(await self._node_json(record))

    async def drain(self, request: web.Request) -> web.Response:
        record = await self._set_state(await self._record(request), "draining")
        agent, stopped, cut = self._controller.agent, [], 0
        if agent is not None:
            for inst in self._on(record.name):
                n = await agent.stop_version(  # this node's instance only (a replica may run elsewhere)
                    inst.version, reason=f"node {record.name} drained", instance=inst.id
                )
                if n is not None:
                    stopped.append(inst.id)
                    cut += n
        await self._event("node.drain", record, request, {"stopped": stopped, "cut": cut})
        return _json({"node": await self._node_json(record), "stopped": stopped, "cut": cut})

    async def label(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        record = await self._record(request)
        to_set = parse_labels(body.get("set") or {})
        gone = body.get("remove") or []
        if not isinstance(gone, list) or not all(isinstance(k, str) and k for k in gone):
            raise InvalidRequest("'remove' must be a list of label keys", param="labels")
        if not to_set and not gone:
            raise InvalidRequest("name labels to set (k=v) or to remove (k-)", param="labels")
        labels = {**dict(record.inventory.get("labels") or {}), **to_set}
        for key in gone:
            labels.pop(key, None)
        changed = NodeRecord(
            name=record.name,
            address=record.address,
            state=record.state,
            inventory={**record.inventory, "labels": labels},
            last_seen=record.last_seen,
        )
        saved = await self._controller.registry.nodes.upsert(changed)
        await self._event("node.label", saved, request, {"labels": labels})
        return _json(await self._node_json(saved))

    async def remove(self, request: web.Request) -> web.Response:
        record = await self._record(request)
        running = self._on(record.name)
        if running:
            ids = ", ".join(i.id for i in running)
            raise Conflict(f"node {record.name!r} runs instances ({ids}): drain it first", param="name")
        await self._controller.registry.nodes.delete(record.name)
        await self._event("node.remove", record, request)
        return _json({"deleted": record.name})

    # -- helpers -------------------------------------------------------------------------------------
    async def _event(
        self, action: str, record: NodeRecord, request: web.Request, detail: dict[str, Any] | None = None
    ) -> None:
        await self._controller.registry.events.add(
            EventRecord(
                action=action,
                target=record.name,
                actor=actor_of(request),
                detail={"state": record.state, **(detail or {})},
            )
        )

    async def _records(self) -> dict[str, NodeRecord]:
        records = {n.name: n for n in await self._controller.registry.nodes.list()}
        if self._node not in records and not records:  # a controller without an agent registered nothing
            records[self._node] = NodeRecord(name=self._node, address="local", state="unknown")
        return records

    async def _record(self, request: web.Request) -> NodeRecord:
        name = request.match_info["name"]
        record = (await self._records()).get(name)
        if record is None:
            raise NotFound(f"node {name!r} not found", param="name")
        return record

    async def _set_state(self, record: NodeRecord, state: str) -> NodeRecord:
        changed = NodeRecord(
            name=record.name,
            address=record.address,
            state=state,
            inventory=record.inventory,
            last_seen=record.last_seen,
        )
        return await self._controller.registry.nodes.upsert(changed)

    def _on(self, node: str) -> list[LiveInstance]:
        return [
            i for i in self._controller.instances() if (getattr(i.handle, "node", None) or self._node) == node
        ]

    async def _node_json(self, record: NodeRecord) -> dict[str, Any]:
        agent = self._controller.agent
        local = record.name == self._node and agent is not None
        out: dict[str, Any] = {
            "name": record.name,
            "address": record.address,
            "state": record.state,
            "local": local,
            "last_seen": record.last_seen.isoformat() if record.last_seen else None,
            "inventory": dict(record.inventory),
            "usage": await agent.usage() if local and agent is not None else None,
            "instances": [],
        }
        for inst in self._on(record.name):
            item = instance_json(inst, self._node)
            tps = self._tps(inst.id)
            item["tokens_per_second"] = round(tps, 1) if tps is not None else None
            out["instances"].append(item)
        return out
