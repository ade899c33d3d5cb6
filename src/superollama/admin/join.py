"""Join tokens and the join (``/admin/v1/nodes/tokens``, ``/admin/v1/nodes/join``; declared in
``contract/nodes.py``): how another machine becomes a node of ``serve --cluster`` (``agent --join``).

An admin makes a token (``nodes token create``; the token is shown once, the registry keeps its SHA-256),
and gives it to the machine. The machine's agent ``POST``\\ s the join with the token as its bearer and its
node name and labels; the answer is what it needs to start its Ray node: the head's control store address
and its name, and Ray's token when the head takes one (``cluster/control_store.py``: the machine's
``ray start`` cannot join without it). It asks again before each restart of its Ray node, so revoking
the token (or letting it expire) keeps the machine out from its next restart on. A join token opens this
route and nothing else: the request middleware lets ``JOIN_PATH`` through without an API key, and the
key cache never holds a token.

The join records the node in the registry with its labels (``inventory.labels``); the cluster agent keeps
those labels on each refresh and hands them to placement (``NodeView.labels``). Each token change and each
join is an audit event (``node.token.create``, ``node.token.revoke``, ``node.join``).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from superollama.admin.routes import PREFIX, actor_of
from superollama.contract.nodes import JOIN_PATH, NODE_NAME
from superollama.core import EventRecord, NodeRecord
from superollama.errors import Conflict, InvalidRequest, Unauthorized
from superollama.gateway import read_json
from superollama.gateway.responses import json_response as _json
from superollama.registry import JoinTokenRecord, Registry
from superollama.security import bearer_key, hash_key
from superollama.security.join_tokens import generate_join_token, looks_like_join_token
from superollama.security.manage import parse_duration

__all__ = ["JoinRoutes", "parse_labels"]

_NAME = re.compile(NODE_NAME)
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")


class JoinRoutes:
    """``cluster_address``: the Ray head's address while this server runs a cluster, else None;
    ``ray_token``: Ray's token of that head (None: it takes none)."""

    def __init__(
        self,
        registry: Registry,
        node: str,
        cluster_address: Callable[[], str | None],
        ray_token: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._registry = registry
        self._node = node
        self._cluster_address = cluster_address
        self._ray_token = ray_token

    def register(self, app: web.Application) -> None:
        """Before ``NodeRoutes``: ``/nodes/tokens`` is not a node named ``tokens``."""
        r = app.router
        r.add_post(f"{PREFIX}/nodes/tokens", self.create)
        r.add_get(f"{PREFIX}/nodes/tokens", self.list)
        r.add_delete(f"{PREFIX}/nodes/tokens/{{id}}", self.revoke)
        r.add_post(JOIN_PATH, self.join)

    async def create(self, request: web.Request) -> web.Response:
        body = await read_json(request) if request.body_exists else {}
        name, expires_in = body.get("name"), body.get("expires_in")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise InvalidRequest("'name' must be a non-empty string", param="name")
        expires_at = None
        if expires_in is not None:
            if isinstance(expires_in, bool) or not isinstance(expires_in, str | int):
                raise InvalidRequest(
                    "'expires_in' must be a duration like 24h, or seconds", param="expires_in"
                )
            expires_at = datetime.now(UTC) + parse_duration(str(expires_in))
        token_id = "jt_" + secrets.token_hex(6)
        new = generate_join_token()
        record = await self._registry.join_tokens.add(
            JoinTokenRecord(
                id=token_id,
                name=name.strip() if name else token_id,
                prefix=new.prefix,
                hash=new.hash,
                expires_at=expires_at,
            )
        )
        await self._event("node.token.create", record.name, request, _token_detail(record))
        return _json({"token": new.key, **token_json(record)}, status=201)

    async def list(self, request: web.Request) -> web.Response:
        return _json({"tokens": [token_json(r) for r in await self._registry.join_tokens.list()]})

    async def revoke(self, request: web.Request) -> web.Response:
        record = await self._registry.join_tokens.revoke(request.match_info["id"])
        await self._event("node.token.revoke", record.name, request, _token_detail(record))
        return _json(token_json(record))

    async def join(self, request: web.Request) -> web.Response:
        token = await self._token(request)
        body = await read_json(request)
        name = body.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequest(
                "'name' must be a node name: letters, digits, '.', '_' or '-', 63 at most", param="name"
            )
        labels = parse_labels(body.get("labels") or {})
        address = self._cluster_address()
        if not address:
            raise Conflict(
                "this server does not run a cluster: start it with 'superollama serve --cluster' to let "
                "machines join",
                param="name",
            )
        if name == self._node:
            raise Conflict(f"{name!r} is the control plane's own node: join under another name", param="name")
        prior = await self._registry.nodes.find(name)
        await self._registry.nodes.upsert(
            NodeRecord(
                name=name,
                address=prior.address if prior is not None else request.remote or "",
                state=prior.state if prior is not None else "joining",
                inventory={**(prior.inventory if prior is not None else {}), "labels": labels},
                last_seen=prior.last_seen if prior is not None else None,
            )
        )
        await self._registry.join_tokens.used(token.id, name)
        detail = {"token": token.id, "labels": labels, "from": request.remote, "rejoin": prior is not None}
        await self._registry.events.add(
            EventRecord(action="node.join", target=name, actor=f"join-token:{token.name}", detail=detail)
        )
        answer: dict[str, Any] = {"node": name, "address": address, "labels": labels}
        ray_token = self._ray_token()
        if ray_token:  # the joiner's Ray node needs it; only a valid join token gets this far
            answer["ray_token"] = ray_token
        return _json(answer)

    async def _token(self, request: web.Request) -> JoinTokenRecord:
        """The join token the request's bearer is: 401 when there is none, or it is unknown, revoked or
        expired (an API key is an unknown join token)."""
        sent = bearer_key(request.headers)
        if sent is None:
            raise Unauthorized(
                "missing join token: send 'Authorization: Bearer TOKEN' (superollama nodes token create)"
            )
        record = (
            await self._registry.join_tokens.by_hash(hash_key(sent)) if looks_like_join_token(sent) else None
        )
        if record is None:
            raise Unauthorized("invalid join token")
        state = record.state(datetime.now(UTC))
        if state == "revoked":
            raise Unauthorized(f"join token {record.name} ({record.prefix}) has been revoked")
        if state == "expired":
            when = _iso(record.expires_at)
            raise Unauthorized(f"join token {record.name} ({record.prefix}) expired at {when}")
        return record

    async def _event(self, action: str, target: str, request: web.Request, detail: dict[str, Any]) -> None:
        await self._registry.events.add(
            EventRecord(action=action, target=target, actor=actor_of(request), detail=detail)
        )


def parse_labels(value: object) -> dict[str, str]:
    """A node's labels as ``{key: value}``; 400 for anything else."""
    if not isinstance(value, Mapping):
        raise InvalidRequest("'labels' must be an object of key: value strings", param="labels")
    out: dict[str, str] = {}
    for key, item in value.items():
        if (
            not isinstance(key, str)
            or not _LABEL.match(key)
            or not isinstance(item, str)
            or not _LABEL.match(item)
        ):
            raise InvalidRequest(
                f"label {key!r}={item!r}: keys and values are letters, digits, '.', '_', '/' or '-'",
                param="labels",
            )
        out[key] = item
    return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _token_detail(record: JoinTokenRecord) -> dict[str, Any]:
    return {"id": record.id, "prefix": record.prefix, "expires_at": _iso(record.expires_at)}


def token_json(record: JoinTokenRecord) -> dict[str, Any]:
    """A join token as the admin API shows it: everything but its hash."""
    return {
        "id": record.id,
        "name": record.name,
        "prefix": record.prefix,
        "state": record.state(datetime.now(UTC)),
        "expires_at": _iso(record.expires_at),
        "revoked_at": _iso(record.revoked_at),
        "created_at": _iso(record.created_at),
        "last_used_at": _iso(record.last_used_at),
        "last_node": record.last_node,
    }
