"""Typed repositories over the registry's tables: versions, nodes, instances, events.

Each method is one short transaction and speaks the core records (``superollama.core``). Database failures
become ``RegistryError``; a missing row is ``ModelNotFound`` (versions) or ``NotFound`` (the others).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, select, update

from superollama.core import EventRecord, InstanceRecord, InstanceState, NodeRecord
from superollama.errors import NotFound
from superollama.registry._base import Database, plain
from superollama.registry._versions import VersionRepository
from superollama.registry.schema import events, instances, nodes

__all__ = ["EventRepository", "InstanceRepository", "NodeRepository", "VersionRepository"]


def _node(row: Row[Any]) -> NodeRecord:
    m = row._mapping
    return NodeRecord(
        name=m["name"],
        address=m["address"],
        state=m["state"],
        inventory=dict(m["inventory"] or {}),
        last_seen=m["last_seen"],
    )


class NodeRepository:
    """Machines with an agent, their inventory and when they were last heard from."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def upsert(self, record: NodeRecord) -> NodeRecord:
        """Insert or replace a node; ``last_seen`` defaults to now (registering is being seen)."""
        values = {
            "name": record.name,
            "address": record.address,
            "state": record.state,
            "inventory": plain(record.inventory),
            "last_seen": record.last_seen or self._db.now(),
        }
        stmt = self._db.upsert(nodes, values, ["name"], ["address", "state", "inventory", "last_seen"])
        async with self._db.write("saving a node") as conn:
            row = (await conn.execute(stmt.returning(*nodes.c))).one()
        return _node(row)

    async def find(self, name: str) -> NodeRecord | None:
        async with self._db.read("reading a node") as conn:
            row = (await conn.execute(select(nodes).where(nodes.c.name == name))).first()
        return None if row is None else _node(row)

    async def get(self, name: str) -> NodeRecord:
        """The node named ``name``; ``NotFound`` if there is none."""
        record = await self.find(name)
        if record is None:
            raise NotFound(f"node {name!r} not found", param="node")
        return record

    async def list(self) -> list[NodeRecord]:
        """Every node, ordered by name."""
        async with self._db.read("listing nodes") as conn:
            rows = (await conn.execute(select(nodes).order_by(nodes.c.name))).all()
        return [_node(row) for row in rows]

    async def heartbeat(self, name: str) -> NodeRecord:
        """Record that the node was seen now."""
        stmt = update(nodes).where(nodes.c.name == name).values(last_seen=self._db.now())
        async with self._db.write("recording a heartbeat") as conn:
            row = (await conn.execute(stmt.returning(*nodes.c))).first()
        if row is None:
            raise NotFound(f"node {name!r} not found", param="node")
        return _node(row)

    async def report(self, name: str, address: str, inventory: Mapping[str, Any]) -> NodeRecord | None:
        """Record what a node reports (address, inventory; seen now) and leave its state alone, so that a
        cordon or drain an admin sets while the report is made is never written over; None when no
        such node is known (``upsert`` registers one)."""
        stmt = (
            update(nodes)
            .where(nodes.c.name == name)
            .values(address=address, inventory=plain(inventory), last_seen=self._db.now())
        )
        async with self._db.write("recording a node's report") as conn:
            row = (await conn.execute(stmt.returning(*nodes.c))).first()
        return None if row is None else _node(row)

    async def delete(self, name: str) -> None:
        """Forget a node; ``NotFound`` if there is none."""
        async with self._db.write("deleting a node") as conn:
            result = await conn.execute(delete(nodes).where(nodes.c.name == name))
        if result.rowcount == 0:
            raise NotFound(f"node {name!r} not found", param="node")


def _instance(row: Row[Any]) -> InstanceRecord:
    m = row._mapping
    return InstanceRecord(
        id=m["id"],
        version=m["version"],
        node=m["node"],
        runtime=m["runtime"],
        state=InstanceState(m["state"]),
        device=m["device"],
        pid=m["pid"],
        endpoint=m["endpoint"],
        error=m["error"],
        started_at=m["started_at"],
        updated_at=m["updated_at"],
    )


def _no_instance(instance_id: str) -> NotFound:
    return NotFound(f"instance {instance_id!r} not found", param="instance")


class InstanceRepository:
    """Observed backend processes: one version on one node/device, with a state."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def upsert(self, record: InstanceRecord) -> InstanceRecord:
        """Insert or replace an instance. ``started_at`` defaults to now on insert and is kept on update
        unless given; ``updated_at`` is always now."""
        now = self._db.now()
        values = {
            "id": record.id,
            "version": record.version,
            "node": record.node,
            "runtime": record.runtime,
            "device": record.device,
            "state": InstanceState(record.state).value,
            "pid": record.pid,
            "endpoint": record.endpoint,
            "error": record.error,
            "started_at": record.started_at or now,
            "updated_at": now,
        }
        changed = [k for k in values if k != "id" and (k != "started_at" or record.started_at is not None)]
        stmt = self._db.upsert(instances, values, ["id"], changed)
        async with self._db.write("saving an instance") as conn:
            row = (await conn.execute(stmt.returning(*instances.c))).one()
        return _instance(row)

    async def find(self, instance_id: str) -> InstanceRecord | None:
        async with self._db.read("reading an instance") as conn:
            row = (await conn.execute(select(instances).where(instances.c.id == instance_id))).first()
        return None if row is None else _instance(row)

    async def get(self, instance_id: str) -> InstanceRecord:
        """The instance with this id; ``NotFound`` if there is none."""
        record = await self.find(instance_id)
        if record is None:
            raise _no_instance(instance_id)
        return record

    async def list(
        self,
        *,
        node: str | None = None,
        version: str | None = None,
        states: Iterable[InstanceState] | None = None,
    ) -> list[InstanceRecord]:
        """Instances ordered by id, filtered by node, version and any of ``states``."""
        stmt = select(instances).order_by(instances.c.id)
        if node is not None:
            stmt = stmt.where(instances.c.node == node)
        if version is not None:
            stmt = stmt.where(instances.c.version == version)
        if states is not None:
            stmt = stmt.where(instances.c.state.in_(sorted({InstanceState(s).value for s in states})))
        async with self._db.read("listing instances") as conn:
            rows = (await conn.execute(stmt)).all()
        return [_instance(row) for row in rows]

    async def set_state(
        self,
        instance_id: str,
        state: InstanceState,
        *,
        error: str | None = None,
        pid: int | None = None,
        endpoint: str | None = None,
    ) -> InstanceRecord:
        """Move an instance to ``state``. The error goes with the state (``None`` clears a stale one);
        ``pid`` and ``endpoint`` are kept unless given."""
        values: dict[str, Any] = {
            "state": InstanceState(state).value,
            "error": error,
            "updated_at": self._db.now(),
        }
        if pid is not None:
            values["pid"] = pid
        if endpoint is not None:
            values["endpoint"] = endpoint
        stmt = update(instances).where(instances.c.id == instance_id).values(values)
        async with self._db.write("changing an instance's state") as conn:
            row = (await conn.execute(stmt.returning(*instances.c))).first()
        if row is None:
            raise _no_instance(instance_id)
        return _instance(row)

    async def delete(self, instance_id: str) -> None:
        """Forget an instance; ``NotFound`` if there is none."""
        async with self._db.write("deleting an instance") as conn:
            result = await conn.execute(delete(instances).where(instances.c.id == instance_id))
        if result.rowcount == 0:
            raise _no_instance(instance_id)


def _event(row: Row[Any]) -> EventRecord:
    m = row._mapping
    return EventRecord(
        action=m["action"],
        target=m["target"],
        result=m["result"],
        actor=m["actor"],
        detail=dict(m["detail"] or {}),
        id=int(m["id"]),
        created_at=m["created_at"],
    )


class EventRepository:
    """The audit/lifecycle log: append and read back, newest first."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, record: EventRecord) -> EventRecord:
        """Append an event; returns it with its ``id`` and ``created_at`` (now unless given)."""
        values = {
            "created_at": record.created_at or self._db.now(),
            "actor": record.actor,
            "action": record.action,
            "target": record.target,
            "result": record.result,
            "detail": plain(record.detail),
        }
        async with self._db.write("recording an event") as conn:
            row = (await conn.execute(events.insert().values(values).returning(*events.c))).one()
        return _event(row)

    async def list(
        self,
        *,
        limit: int = 100,
        since: datetime | None = None,
        target: str | None = None,
        action: str | None = None,
    ) -> list[EventRecord]:
        """At most ``limit`` events, newest first; ``since`` is inclusive."""
        stmt = select(events).order_by(events.c.created_at.desc(), events.c.id.desc()).limit(max(0, limit))
        if since is not None:
            stmt = stmt.where(events.c.created_at >= since)
        if target is not None:
            stmt = stmt.where(events.c.target == target)
        if action is not None:
            stmt = stmt.where(events.c.action == action)
        async with self._db.read("listing events") as conn:
            rows = (await conn.execute(stmt)).all()
        return [_event(row) for row in rows]
