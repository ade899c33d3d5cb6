"""``/v1/batches`` as the OpenAI SDK calls it (``client.batches.create|retrieve|list|cancel``), and the
``Sender`` that runs a batch's requests through this gateway (``control/batches.py`` says why).

A batch of another key is a 404, as if it did not exist (as files are). The input and result files are
``/v1/files`` (``plugins/rag``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from superollama.control.batch_files import batch_json
from superollama.control.batches import Answer, BatchManager
from superollama.errors import InvalidRequest
from superollama.gateway.exchange import principal_of
from superollama.gateway.openai_routes import read_json
from superollama.gateway.responses import json_response
from superollama.registry._batches import BatchRecord
from superollama.security.sessions import COOKIE, CSRF_HEADER, Sessions

__all__ = ["BatchRoutes", "LoopbackSender"]


class BatchRoutes:
    def __init__(self, batches: BatchManager) -> None:
        self._batches = batches

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/batches", self.create)
        r.add_get("/v1/batches", self.list)
        r.add_get("/v1/batches/{id}", self.get)
        r.add_post("/v1/batches/{id}/cancel", self.cancel)

    async def create(self, request: web.Request) -> web.Response:
        principal = principal_of(request)
        batch = await self._batches.create(
            await read_json(request),
            key_id=principal.key_id if principal else None,
            key_prefix=principal.prefix if principal else None,
        )
        return json_response(batch_json(batch))

    async def get(self, request: web.Request) -> web.Response:
        batch = await self._batches.get(request.match_info["id"], key_id=_key(request))
        return json_response(batch_json(batch))

    async def cancel(self, request: web.Request) -> web.Response:
        batch = await self._batches.cancel(request.match_info["id"], key_id=_key(request))
        return json_response(batch_json(batch))

    async def list(self, request: web.Request) -> web.Response:
        raw = request.query.get("limit", "20")
        if not raw.isdigit() or not 1 <= int(raw) <= 100:
            raise InvalidRequest("limit must be an integer from 1 to 100", param="limit")
        limit = int(raw)
        found = await self._batches.list(
            key_id=_key(request), limit=limit + 1, after=request.query.get("after") or None
        )
        data = [batch_json(b) for b in found[:limit]]
        return json_response(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(found) > limit,
            }
        )


def _key(request: web.Request) -> str | None:
    principal = principal_of(request)
    return principal.key_id if principal is not None else None


class LoopbackSender:
    """Sends a batch's request to this gateway's own URL, as the batch's key: a web UI session cookie
    (``security.sessions``) naming that key, signed with the home's session key. It carries no key
    material; the gateway checks the key as for any request (revoked, expired, rotated: 401, recorded
    in the error file), and its rate limits, budget and usage ledger count the request to it."""

    def __init__(self, url: Callable[[], str | None], sessions: Sessions | None, *, timeout: float) -> None:
        self._url = url
        self._sessions = sessions
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._client: aiohttp.ClientSession | None = None

    def ready(self) -> bool:
        return bool(self._url())

    async def send(self, batch: BatchRecord, url: str, body: Mapping[str, Any], request_id: str) -> Answer:
        base = self._url()
        if not base:
            raise OSError("this gateway is not listening yet")
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        if batch.key_id is not None and self._sessions is not None:
            session = self._sessions.issue(batch.key_id, batch.key_prefix or "")
            headers["Cookie"] = f"{COOKIE}={session.cookie}"
            headers[CSRF_HEADER] = session.csrf
        try:
            async with self._session().post(
                base + url, data=orjson.dumps(dict(body)), headers=headers, timeout=self._timeout
            ) as answer:
                raw = await answer.read()
                retry_after = answer.headers.get("Retry-After")
                return Answer(
                    answer.status,
                    _body(raw),
                    answer.headers.get("X-Request-Id", request_id),
                    float(retry_after) if retry_after and _number(retry_after) else None,
                )
        except aiohttp.ClientError as exc:
            raise OSError(f"{type(exc).__name__}: {exc}") from exc

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None or self._client.closed:
            self._client = aiohttp.ClientSession(trust_env=False)  # our own loopback: never a proxy
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


def _body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"error": {"message": raw.decode("utf-8", "replace")[:2000], "type": "server_error"}}


def _number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
