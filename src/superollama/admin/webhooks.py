"""Admin API for webhooks: add (the signing secret is in this answer only), list, show, change (``enabled``,
``events``, ``url``, ``description``, ``rotate_secret``), remove, the delivery log, and a ping sent now."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from superollama.admin.routes import PREFIX
from superollama.control.webhooks import WebhookManager
from superollama.errors import InvalidRequest
from superollama.gateway import read_json
from superollama.gateway.responses import json_response as _json
from superollama.registry import Delivery, WebhookRecord

__all__ = ["WebhookRoutes"]

_STATES = ("pending", "delivered", "failed")


class WebhookRoutes:
    def __init__(self, webhooks: WebhookManager) -> None:
        self._webhooks = webhooks

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get(f"{PREFIX}/webhooks", self.list)
        r.add_post(f"{PREFIX}/webhooks", self.add)
        r.add_get(f"{PREFIX}/webhooks/{{id}}", self.get)
        r.add_patch(f"{PREFIX}/webhooks/{{id}}", self.change)
        r.add_delete(f"{PREFIX}/webhooks/{{id}}", self.remove)
        r.add_get(f"{PREFIX}/webhooks/{{id}}/deliveries", self.deliveries)
        r.add_post(f"{PREFIX}/webhooks/{{id}}/ping", self.ping)

    async def list(self, request: web.Request) -> web.Response:
        return _json({"webhooks": [hook_json(h) for h in await self._webhooks.all()]})

    async def add(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if unknown := sorted(set(body) - {"url", "events", "description", "secret"}):
            raise InvalidRequest(f"unknown field {unknown[0]!r}", param=unknown[0])
        secret = body.get("secret")
        if secret is not None and not isinstance(secret, str):
            raise InvalidRequest("'secret' must be a string", param="secret")
        hook, plain = await self._webhooks.add(
            body.get("url"), body.get("events"), description=body.get("description", ""), secret=secret
        )
        return _json({**hook_json(hook), "secret": plain}, status=201)

    async def get(self, request: web.Request) -> web.Response:
        return _json(hook_json(await self._webhooks.get(request.match_info["id"])))

    async def change(self, request: web.Request) -> web.Response:
        hook, secret = await self._webhooks.change(request.match_info["id"], await read_json(request))
        answer = hook_json(hook)
        if secret is not None:
            answer["secret"] = secret
        return _json(answer)

    async def remove(self, request: web.Request) -> web.Response:
        hook_id = request.match_info["id"]
        await self._webhooks.remove(hook_id)
        return _json({"deleted": hook_id})

    async def deliveries(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            raise InvalidRequest("'limit' must be an integer", param="limit") from None
        state = q.get("state")
        if state is not None and state not in _STATES:
            raise InvalidRequest(f"'state' must be one of {', '.join(_STATES)}", param="state")
        found = await self._webhooks.deliveries(request.match_info["id"], limit=limit, state=state)
        return _json({"deliveries": [delivery_json(d) for d in found]})

    async def ping(self, request: web.Request) -> web.Response:
        return _json(delivery_json(await self._webhooks.ping(request.match_info["id"])))


def hook_json(hook: WebhookRecord) -> dict[str, Any]:
    """A hook as the API shows it: never its secret."""
    return {
        "id": hook.id,
        "url": hook.url,
        "events": list(hook.events),
        "description": hook.description,
        "enabled": hook.enabled,
        "created_at": hook.created_at.isoformat() if hook.created_at else None,
        "updated_at": hook.updated_at.isoformat() if hook.updated_at else None,
    }


def delivery_json(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "webhook_id": d.webhook_id,
        "event_id": d.event_id,
        "type": d.action,
        "state": d.state,
        "attempts": d.attempts,
        "status_code": d.status_code,
        "error": d.error,
        "duration_ms": None if d.duration_ms is None else round(d.duration_ms, 2),
        "next_at": d.next_at.isoformat() if d.state == "pending" else None,
        "created_at": d.created_at.isoformat(),
        "updated_at": d.updated_at.isoformat(),
        "payload": d.payload,
    }
