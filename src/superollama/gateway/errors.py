"""Render every failure at the edge in the client's protocol, with the right status.

One middleware (``ErrorMiddleware``; ``error_middleware`` is one with no check): our error tree → OpenAI's
envelope (``/api/*`` → Ollama's ``{"error": "..."}``, ``/v1/messages*`` → Anthropic's
``{"type": "error", "error": {"type", "message"}}``); aiohttp's own HTTP errors (404 route, 405, 413 body
too large) get the same shapes; anything else is a 500 with a generic message and a logged traceback —
never a crashed server.

A ``check`` given to the middleware runs before the handler, inside the rendering: the admin API's body
validation (``admin/validation.py``). It is a plain function that returns None for a request it has nothing
to do with (every data-plane request: one call, no coroutine) or the awaitable that checks the request.
Every middleware is one more coroutine that each request enters and each of its awaits passes through,
so the data plane has as few as it can.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import ClassVar

import orjson
from aiohttp import web

from superollama.errors import InvalidRequest, NotFound, PayloadTooLarge, SuperOllamaError
from superollama.gateway.exchange import exchange_of
from superollama.wire import anthropic
from superollama.wire.openai import error_body

__all__ = ["ANTHROPIC_PREFIX", "Check", "ErrorMiddleware", "error_middleware", "error_response"]

ANTHROPIC_PREFIX = "/v1/messages"  # the Anthropic Messages API: its own error envelope

log = logging.getLogger("superollama.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Check = Callable[[web.Request], Awaitable[None] | None]


def error_response(
    exc: SuperOllamaError, *, ollama: bool = False, anthropic_api: bool = False
) -> web.Response:
    if anthropic_api:
        body = anthropic.error_body(exc)
    else:
        body = {"error": exc.message} if ollama else error_body(exc)
    headers = dict(exc.headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return web.Response(
        body=orjson.dumps(body), status=exc.status, content_type="application/json", headers=headers
    )


def _from_http(exc: web.HTTPException) -> SuperOllamaError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge(f"request body too large: {exc.text or ''}".strip(": "))
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("no such route")
    err = InvalidRequest(exc.reason) if 400 <= exc.status < 500 else SuperOllamaError(exc.reason)
    err.status = exc.status
    return err


class ErrorMiddleware:
    """The middleware (an object aiohttp calls as ``middleware(request, handler=...)``), with an optional
    ``check`` run before the handler (see the module's docstring)."""

    __middleware_version__: ClassVar[int] = 1  # aiohttp's mark of a new-style middleware
    __slots__ = ("_check",)

    def __init__(self, check: Check | None = None) -> None:
        self._check = check

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        ollama = request.path.startswith("/api/")
        if request.path.startswith(ANTHROPIC_PREFIX):
            ollama = False
        try:
            if self._check is not None and (checking := self._check(request)) is not None:
                await checking
            return await handler(request)
        except SuperOllamaError as exc:
            return _render(request, exc, ollama)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _render(request, _from_http(exc), ollama)
        except (ConnectionResetError, ConnectionError):
            raise  # the client went away: nothing to render
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return _render(request, SuperOllamaError("internal server error"), ollama)


error_middleware = ErrorMiddleware()


def _render(request: web.Request, exc: SuperOllamaError, ollama: bool) -> web.Response:
    ex = exchange_of(request)
    if ex is not None:
        ex.error_type, ex.error = exc.code or exc.type, exc.message
    return error_response(exc, ollama=ollama, anthropic_api=request.path.startswith(ANTHROPIC_PREFIX))
