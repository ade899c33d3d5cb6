"""Request hooks: code of a plugin that sees every inference request before it is routed, and its answer
after, on every API edge (OpenAI ``/v1/chat/completions|completions|embeddings``, rerank
``/v1/rerank`` and ``/v2/rerank``, ``/v1/responses``,
Anthropic ``/v1/messages``, Ollama ``/api/chat|generate|embed|embeddings``).

One seam for all of them: ``hooks_middleware`` sits inside the error middleware (so a rejection is
rendered in the client's protocol, as any other error) and outside the routes. It parses the body once,
runs ``RequestHooks.before`` (which may change ``HookRequest.body`` in place, or raise a
``SuperOllamaError`` — ``InvalidRequest`` is a clean 400 — to refuse the request), and hands the parsed,
possibly changed body to the route on its ``Exchange``: ``read_json`` returns it instead of parsing the
bytes again. After the
route answers, ``RequestHooks.after`` sees the JSON answer of a request that was not streamed and may change
it in place (redaction) or refuse it; for a streamed answer, already sent, it sees the status only.

Cost when no plugin has a request hook: none measurable — the app factory does not install the
middleware; ``read_json`` looks at the request's exchange (a lookup that hits, ~0.2 µs; see
``bench/plugin_hooks.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from superollama.gateway.exchange import EXCHANGE, Exchange, exchange_of

__all__ = ["HOOKED_PATHS", "HookRequest", "HookResponse", "RequestHooks", "hooks_middleware"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HOOKED_PATHS: Mapping[str, str] = {  # path → the client's protocol, as a hook sees it
    "/v1/chat/completions": "openai",
    "/v1/completions": "openai",
    "/v1/embeddings": "openai",
    "/v1/rerank": "openai",  # rerank answers errors in the OpenAI shape, both versions
    "/v2/rerank": "openai",
    "/v1/responses": "responses",
    "/v1/messages": "anthropic",
    "/api/chat": "ollama",
    "/api/generate": "ollama",
    "/api/embed": "ollama",
    "/api/embeddings": "ollama",
}


@dataclass(slots=True, eq=False)
class HookRequest:
    """One inference request as a hook sees it. ``body`` is the client's JSON in its own protocol
    (``protocol``: openai, responses, anthropic or ollama); a ``before`` hook may change it in place."""

    protocol: str
    path: str
    body: dict[str, Any]
    model: str | None  # as the client named it
    key_id: str | None  # the API key's id (None: no key)
    request_id: str
    headers: Mapping[str, str]


@dataclass(slots=True, eq=False)
class HookResponse:
    """The answer as an ``after`` hook sees it: ``body`` is the JSON answer (change it in place), None when
    the answer was streamed (already sent) or is not JSON."""

    status: int
    body: Any
    streamed: bool


class RequestHooks(Protocol):
    def before(self, request: HookRequest) -> None:
        """Every ``before_request`` hook, in order; raises the ``SuperOllamaError`` that refuses it."""
        ...

    def after(self, request: HookRequest, response: HookResponse) -> None:
        """Every ``after_response`` hook, in order."""
        ...


def hooks_middleware(hooks: RequestHooks) -> Middleware:
    """The middleware that runs ``hooks`` on the inference routes (install it after the error middleware)."""

    @web.middleware
    async def request_hooks(request: web.Request, handler: Handler) -> web.StreamResponse:
        protocol = HOOKED_PATHS.get(request.path) if request.method == "POST" else None
        if protocol is None:
            return await handler(request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return await handler(request)  # the route words the error, as without hooks
        if not isinstance(body, dict):
            return await handler(request)
        ex = exchange_of(request)
        if ex is None:  # an app without the request middleware (a test's): where the body travels
            ex = request[EXCHANGE] = Exchange(request_id="", protocol=protocol)
        model = body.get("model")
        hooked = HookRequest(
            protocol=protocol,
            path=request.path,
            body=body,
            model=model if isinstance(model, str) else None,
            key_id=ex.principal.key_id if ex.principal is not None else None,
            request_id=ex.request_id,
            headers=request.headers,
        )
        hooks.before(hooked)
        ex.body = hooked.body
        response = await handler(request)
        if isinstance(response, web.Response) and not response.prepared:
            _after_json(hooks, hooked, response)
        else:
            hooks.after(hooked, HookResponse(response.status, None, streamed=True))
        return response

    return request_hooks


def _after_json(hooks: RequestHooks, hooked: HookRequest, response: web.Response) -> None:
    raw = response.body
    answer: Any = None
    if (
        isinstance(raw, bytes)
        and response.content_type == "application/json"
        and "Content-Encoding" not in response.headers
    ):
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            answer = None
    seen = HookResponse(response.status, answer, streamed=False)
    hooks.after(hooked, seen)
    if answer is not None:
        response.body = orjson.dumps(seen.body)
