"""The asynchronous client's resource groups for the admin API's system side: events, usage,
gateways, nodes, plugins, webhooks and grounding. Each method is one route, marked with ``@route``.

Its synchronous twin is generated from this file by ``scripts/unasync.py`` (edit this one, then
run it; a unit test fails when the two differ).
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import orjson

from superollama.client._async_transport import AsyncResource
from superollama.client._common import ADMIN, quote_name, route, without_none
from superollama.client.types import (
    Deleted,
    Delivery,
    Event,
    GroundingRule,
    JSONObject,
    Node,
    Plugin,
    UsageReport,
    Webhook,
)

__all__ = [
    "AsyncEvents",
    "AsyncGateways",
    "AsyncGrounding",
    "AsyncNodes",
    "AsyncPlugins",
    "AsyncUsage",
    "AsyncWebhooks",
]


class AsyncEvents(AsyncResource):
    """The event log: who did what, when, and how it ended."""

    @route("GET", ADMIN + "/events")
    async def list(
        self,
        *,
        limit: int | None = None,
        since: str | None = None,
        target: str | None = None,
        action: str | None = None,
    ) -> list[Event]:
        params = {"limit": limit, "since": since, "target": target, "action": action}
        return cast(list[Event], (await self._t.call("GET", ADMIN + "/events", params=params))["events"])

    @route("GET", ADMIN + "/events/stream")
    async def stream(
        self,
        *,
        backlog: int | None = None,
        target: str | None = None,
        action: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Event]:
        """Events as they happen (after the ``backlog`` latest), until the loop is left or, with
        ``timeout``, for that many seconds."""
        params = {"backlog": backlog, "target": target, "action": action, "timeout": timeout}
        async for _name, data in self._t.events("GET", ADMIN + "/events/stream", params=params):
            yield cast(Event, orjson.loads(data))


class AsyncUsage(AsyncResource):
    @route("GET", ADMIN + "/usage")
    async def get(self, *, by: str = "model", since: str = "24h", until: str | None = None) -> UsageReport:
        """Requests, tokens, cost and latency grouped ``by`` key, model, deployment or day (or
        ``request``: the rows themselves)."""
        params = {"by": by, "since": since, "until": until}
        return cast(UsageReport, await self._t.call("GET", ADMIN + "/usage", params=params))


class AsyncGateways(AsyncResource):
    @route("GET", ADMIN + "/gateways")
    async def list(self) -> JSONObject:
        """The gateway processes sharing this registry, and their workers."""
        return cast(JSONObject, await self._t.call("GET", ADMIN + "/gateways"))

    @route("GET", ADMIN + "/resilience")
    async def resilience(self) -> JSONObject:
        """Circuit breakers, the retry budget and route limits."""
        return cast(JSONObject, await self._t.call("GET", ADMIN + "/resilience"))


class AsyncNodes(AsyncResource):
    @route("GET", ADMIN + "/nodes")
    async def list(self) -> list[Node]:
        return cast(list[Node], (await self._t.call("GET", ADMIN + "/nodes"))["nodes"])

    @route("GET", ADMIN + "/nodes/{name}")
    async def get(self, name: str) -> Node:
        return cast(Node, await self._t.call("GET", f"{ADMIN}/nodes/{quote_name(name)}"))

    @route("POST", ADMIN + "/nodes/{name}/cordon")
    async def cordon(self, name: str) -> Node:
        """Placement puts nothing new on the node; its instances keep serving."""
        return cast(Node, await self._t.call("POST", f"{ADMIN}/nodes/{quote_name(name)}/cordon"))

    @route("POST", ADMIN + "/nodes/{name}/uncordon")
    async def uncordon(self, name: str) -> Node:
        return cast(Node, await self._t.call("POST", f"{ADMIN}/nodes/{quote_name(name)}/uncordon"))

    @route("POST", ADMIN + "/nodes/{name}/drain")
    async def drain(self, name: str) -> dict[str, Any]:
        """Cordon the node and stop its instances: ``{"node": …, "stopped": [instance ids]}``."""
        return cast(dict[str, Any], await self._t.call("POST", f"{ADMIN}/nodes/{quote_name(name)}/drain"))

    @route("POST", ADMIN + "/nodes/{name}/labels")
    async def label(
        self, name: str, labels: dict[str, str] | None = None, *, remove: Sequence[str] = ()
    ) -> Node:
        """Set (``{"zone": "b"}``) and remove (``["gpu"]``) the node's labels; placement matches them."""
        body = {"set": dict(labels or {}), "remove": list(remove)}
        return cast(Node, await self._t.call("POST", f"{ADMIN}/nodes/{quote_name(name)}/labels", json=body))

    @route("DELETE", ADMIN + "/nodes/{name}")
    async def remove(self, name: str) -> dict[str, Any]:
        """Forget the node (refused while instances run there)."""
        return cast(dict[str, Any], await self._t.call("DELETE", f"{ADMIN}/nodes/{quote_name(name)}"))

    @route("POST", ADMIN + "/nodes/tokens")
    async def create_token(self, *, name: str | None = None, expires_in: str | None = None) -> JSONObject:
        """A join token for ``agent --join``: its secret is in ``token``, shown this once."""
        body = without_none(name=name, expires_in=expires_in)
        return cast(JSONObject, await self._t.call("POST", ADMIN + "/nodes/tokens", json=body))

    @route("GET", ADMIN + "/nodes/tokens")
    async def tokens(self) -> builtins.list[JSONObject]:
        """The join tokens (never their secrets)."""
        return cast(builtins.list[JSONObject], (await self._t.call("GET", ADMIN + "/nodes/tokens"))["tokens"])

    @route("DELETE", ADMIN + "/nodes/tokens/{id}")
    async def revoke_token(self, ident: str) -> JSONObject:
        """Revoke a join token (id or name): no machine joins or rejoins with it any more."""
        return cast(JSONObject, await self._t.call("DELETE", f"{ADMIN}/nodes/tokens/{quote_name(ident)}"))

    @route("POST", ADMIN + "/nodes/join")
    async def join(self, name: str, *, labels: dict[str, str] | None = None) -> JSONObject:
        """Join the cluster as node ``name``: the client's key must be a join token. Answers the Ray
        head's address (``address``) and the node's name and labels."""
        body = {"name": name, "labels": labels or {}}
        return cast(JSONObject, await self._t.call("POST", ADMIN + "/nodes/join", json=body, idempotent=True))


class AsyncPlugins(AsyncResource):
    @route("GET", ADMIN + "/plugins")
    async def list(self) -> list[Plugin]:
        """The plugins the server loaded (or failed to), with what each registered."""
        return cast(list[Plugin], (await self._t.call("GET", ADMIN + "/plugins"))["data"])


class AsyncWebhooks(AsyncResource):
    """Signed webhooks for events, and their delivery log."""

    @route("GET", ADMIN + "/webhooks")
    async def list(self) -> list[Webhook]:
        return cast(list[Webhook], (await self._t.call("GET", ADMIN + "/webhooks"))["webhooks"])

    @route("POST", ADMIN + "/webhooks")
    async def create(
        self,
        url: str,
        *,
        events: Sequence[str] | None = None,
        description: str | None = None,
        secret: str | None = None,
    ) -> Webhook:
        """A new hook, with its signing ``secret`` (shown this once)."""
        body = without_none(url=url, events=None if events is None else list(events), description=description)
        body.update(without_none(secret=secret))
        return cast(Webhook, await self._t.call("POST", ADMIN + "/webhooks", json=body))

    @route("GET", ADMIN + "/webhooks/{id}")
    async def get(self, hook_id: str) -> Webhook:
        return cast(Webhook, await self._t.call("GET", f"{ADMIN}/webhooks/{quote_name(hook_id)}"))

    @route("PATCH", ADMIN + "/webhooks/{id}")
    async def update(self, hook_id: str, **changes: Any) -> Webhook:
        """``changes``: url, events, description, enabled; ``rotate_secret=True`` for a new secret."""
        return cast(
            Webhook, await self._t.call("PATCH", f"{ADMIN}/webhooks/{quote_name(hook_id)}", json=changes)
        )

    @route("DELETE", ADMIN + "/webhooks/{id}")
    async def delete(self, hook_id: str) -> Deleted:
        return cast(Deleted, await self._t.call("DELETE", f"{ADMIN}/webhooks/{quote_name(hook_id)}"))

    @route("GET", ADMIN + "/webhooks/{id}/deliveries")
    async def deliveries(
        self, hook_id: str, *, state: str | None = None, limit: int | None = None
    ) -> builtins.list[Delivery]:
        path = f"{ADMIN}/webhooks/{quote_name(hook_id)}/deliveries"
        answer = await self._t.call("GET", path, params={"state": state, "limit": limit})
        return cast(builtins.list[Delivery], answer["deliveries"])

    @route("POST", ADMIN + "/webhooks/{id}/ping")
    async def ping(self, hook_id: str) -> Delivery:
        return cast(Delivery, await self._t.call("POST", f"{ADMIN}/webhooks/{quote_name(hook_id)}/ping"))


class AsyncGrounding(AsyncResource):
    """Grounded chat: a model or deployment that answers from vector stores, with citations."""

    @route("GET", ADMIN + "/grounding")
    async def list(self) -> list[GroundingRule]:
        return cast(list[GroundingRule], (await self._t.call("GET", ADMIN + "/grounding"))["grounding"])

    @route("GET", ADMIN + "/grounding/{name}")
    async def get(self, model: str) -> GroundingRule:
        return cast(GroundingRule, await self._t.call("GET", f"{ADMIN}/grounding/{quote_name(model)}"))

    @route("PUT", ADMIN + "/grounding/{name}")
    async def set(
        self,
        model: str,
        vector_store_ids: Sequence[str],
        *,
        top_k: int | None = None,
        score_threshold: float | None = None,
        template: str | None = None,
    ) -> GroundingRule:
        body = {
            "vector_store_ids": list(vector_store_ids),
            "top_k": top_k,
            "score_threshold": score_threshold,
            "template": template,
        }
        path = f"{ADMIN}/grounding/{quote_name(model)}"
        return cast(GroundingRule, await self._t.call("PUT", path, json=body, idempotent=True))

    @route("DELETE", ADMIN + "/grounding/{name}")
    async def delete(self, model: str) -> Deleted:
        return cast(Deleted, await self._t.call("DELETE", f"{ADMIN}/grounding/{quote_name(model)}"))
