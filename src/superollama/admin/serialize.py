"""JSON shapes of the admin API (the CLI and the web UI read exactly these)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psutil

from superollama.agent import LiveInstance
from superollama.control import VersionDetails
from superollama.core import EventRecord, VersionRecord
from superollama.store import MoveResult, StorageRoot

__all__ = ["details_json", "event_json", "instance_json", "move_json", "root_json", "version_json"]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def version_json(v: VersionRecord) -> dict[str, Any]:
    meta = v.metadata
    return {
        "name": v.name,
        "model": v.model,
        "tag": v.tag,
        "format": v.format,
        "digest": v.digest,
        "size": v.size,
        "source": v.source,
        "enabled": v.enabled,
        "runtime": v.runtime,
        "architecture": meta.get("architecture"),
        "parameters": meta.get("parameter_count"),
        "parameter_size": meta.get("parameter_size"),
        "quantization": meta.get("quantization"),
        "context_length": meta.get("context_length"),
        "created_at": _iso(v.created_at),
        "updated_at": _iso(v.updated_at),
    }


def instance_json(inst: LiveInstance, node: str) -> dict[str, Any]:
    """``node``: this process's node; a cluster's instance says its own (its memory is measured there,
    not here: ``memory_bytes`` is None for an instance on another node)."""
    where = getattr(inst.handle, "node", None) or node
    return {
        "id": inst.id,
        "version": inst.version,
        "node": where,
        "runtime": inst.runtime,
        "device": inst.device,
        "state": str(inst.state),
        "pid": inst.pid,
        "endpoint": inst.handle.endpoint.base_url,
        "in_flight": inst.in_flight,
        "memory_bytes": _rss(inst.pid) if where == node else None,
        "load_seconds": round(inst.load_seconds, 3),
        "started_at": _iso(inst.started_at),
    }


def _rss(pid: int | None) -> int | None:
    """Resident memory of an instance's process on this node (None when it is gone or elsewhere)."""
    if not pid:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.Error, OSError):
        return None


def details_json(d: VersionDetails, node: str) -> dict[str, Any]:
    out = version_json(d.version)
    out["metadata"] = dict(d.version.metadata)
    out["layers"] = d.layers
    out["instances"] = [instance_json(i, node) for i in d.instances]
    out["storage_root"] = d.storage_root
    return out


def root_json(root: StorageRoot, versions: list[str], disk: tuple[int, int] | None) -> dict[str, Any]:
    return {
        "name": root.name,
        "path": str(root.path),
        "declared": root.declared,
        "home": root.is_home,
        "usable": root.usable,
        "problem": root.problem,
        "free_bytes": disk[0] if disk else None,
        "total_bytes": disk[1] if disk else None,
        "versions": versions,
    }


def move_json(result: MoveResult) -> dict[str, Any]:
    return {
        "root": result.root.name,
        "path": str(result.root.path),
        "from": result.source,
        "unchanged": result.unchanged,
        "copied": list(result.copied),
        "freed": list(result.freed),
        "kept": list(result.kept),
    }


def event_json(e: EventRecord) -> dict[str, Any]:
    return {
        "id": e.id,
        "created_at": _iso(e.created_at),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "result": e.result,
        "detail": dict(e.detail),
    }
