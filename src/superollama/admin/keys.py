"""Admin API for API keys: create (the key is returned once), list, show, revoke, rotate."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from superollama.admin.routes import PREFIX, actor_of
from superollama.core.types import KeyRecord
from superollama.errors import InvalidRequest, SuperOllamaError
from superollama.gateway import read_json
from superollama.gateway.responses import json_response as _json
from superollama.security import IssuedKey, KeyManager, KeySpec, Principal, SpendStore, key_state
from superollama.security.manage import parse_duration

__all__ = ["KeyRoutes", "issued_json", "key_json", "spec_from_json"]


class KeyRoutes:
    """``/admin/v1/keys``. ``spend``: the limiter's spend counters, to show a key's spend this period."""

    def __init__(self, manager: KeyManager, *, spend: SpendStore | None = None) -> None:
        self._manager = manager
        self._spend = spend

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get(f"{PREFIX}/keys", self.list)
        r.add_post(f"{PREFIX}/keys", self.create)
        r.add_post(f"{PREFIX}/keys/{{ident}}/revoke", self.revoke)
        r.add_post(f"{PREFIX}/keys/{{ident}}/rotate", self.rotate)
        r.add_get(f"{PREFIX}/keys/{{ident}}", self.show)

    async def create(self, request: web.Request) -> web.Response:
        spec = spec_from_json(await read_json(request))
        issued = await self._manager.create(spec, actor=actor_of(request))
        return _json(issued_json(issued), status=201)

    async def list(self, request: web.Request) -> web.Response:
        now = datetime.now(UTC)
        return _json({"keys": [key_json(r, now) for r in await self._manager.list()]})

    async def show(self, request: web.Request) -> web.Response:
        record = await self._manager.get(request.match_info["ident"])
        out = key_json(record, datetime.now(UTC))
        if self._spend is not None:
            try:
                out["spend_usd"] = await self._spend.spent(Principal.from_record(record))
            except SuperOllamaError:
                out["spend_usd"] = None  # the spend store is unreachable: show the key anyway
        return _json(out)

    async def revoke(self, request: web.Request) -> web.Response:
        record = await self._manager.revoke(request.match_info["ident"], actor=actor_of(request))
        return _json(key_json(record, datetime.now(UTC)))

    async def rotate(self, request: web.Request) -> web.Response:
        issued = await self._manager.rotate(request.match_info["ident"], actor=actor_of(request))
        return _json(issued_json(issued))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def key_json(record: KeyRecord, now: datetime) -> dict[str, Any]:
    """A key as the admin API shows it: everything but its hash."""
    return {
        "id": record.id,
        "name": record.name,
        "prefix": record.prefix,
        "role": record.role,
        "state": key_state(record, now),
        "models": list(record.models),
        "rpm": record.rpm,
        "tpm": record.tpm,
        "model_limits": {k: dict(v) for k, v in record.model_limits.items()},
        "budget_usd": record.budget_usd,
        "budget_period": record.budget_period,
        "expires_at": _iso(record.expires_at),
        "revoked_at": _iso(record.revoked_at),
        "created_at": _iso(record.created_at),
        "last_used_at": _iso(record.last_used_at),
    }


def issued_json(issued: IssuedKey) -> dict[str, Any]:
    """A new or rotated key: its record plus ``key``, the secret, shown this once."""
    return {"key": issued.key, **key_json(issued.record, datetime.now(UTC))}


def _optional_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{name}' must be an integer", param=name)
    return value


def _expires_at(body: Mapping[str, Any]) -> datetime | None:
    if body.get("expires_in") is not None:
        value = body["expires_in"]
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise InvalidRequest("'expires_in' must be a duration like 30d", param="expires_in")
        return datetime.now(UTC) + parse_duration(value)
    value = body.get("expires_at")
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise InvalidRequest("'expires_at' must be an ISO 8601 time", param="expires_at") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def spec_from_json(body: Mapping[str, Any]) -> KeySpec:
    """A create request's body: ``name`` (required), ``role``, ``models`` (list or comma-separated),
    ``rpm``, ``tpm``, ``model_limits`` ({pattern: {rpm, tpm}}), ``budget_usd``, ``budget_period``,
    ``expires_in`` (``30d``) or ``expires_at`` (ISO 8601)."""
    models = body.get("models") or []
    if isinstance(models, str):
        models = [m for m in (p.strip() for p in models.split(",")) if m]
    if not isinstance(models, list):
        raise InvalidRequest("'models' must be a list of model names or patterns", param="models")
    limits = body.get("model_limits") or {}
    if not isinstance(limits, Mapping):
        raise InvalidRequest("'model_limits' must be an object {pattern: {rpm, tpm}}", param="model_limits")
    budget = body.get("budget_usd")
    return KeySpec(
        name=body.get("name") or "",
        role=body.get("role") or "user",
        models=tuple(models),
        rpm=_optional_int(body, "rpm"),
        tpm=_optional_int(body, "tpm"),
        model_limits=dict(limits),
        budget_usd=budget,
        budget_period=body.get("budget_period") or "month",
        expires_at=_expires_at(body),
    )
