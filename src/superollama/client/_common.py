"""What the synchronous and the asynchronous client share: finding the server, the headers, the retry
policy, and the one place where httpx's exceptions and error answers become ``SuperollamaError`` s.

Retries: a call is retried (at most ``max_retries`` times, with exponential backoff, or the server's
``Retry-After`` when it sends one up to ``MAX_RETRY_WAIT``) only when repeating it cannot do a thing twice:
when the connection was never made (the server saw nothing), or when the call is safe or idempotent (GET,
and the PUT/DELETE calls that name what they set) and the server was unreachable mid-call or answered
502, 503 or 504. A POST that reached the server is never repeated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import orjson

from superollama import __version__
from superollama.client._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    error_for_status,
)

if TYPE_CHECKING:
    import httpx

    from superollama.settings import Settings

__all__ = [
    "ADMIN",
    "CONNECT_TIMEOUT",
    "DEFAULT_MAX_RETRIES",
    "MOVE_TIMEOUT",
    "REQUEST_TIMEOUT",
    "STREAM_READ_TIMEOUT",
    "find_server_url",
    "flag",
    "quote_name",
    "route",
    "without_none",
]

USER_AGENT = f"superollama-client/{__version__}"
CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 600.0  # some admin calls load or drain models
MOVE_TIMEOUT = 3600.0  # a move waits for the old instance's requests (the server's drain bound)
STREAM_READ_TIMEOUT = 120.0  # progress streams repeat their latest line every few seconds
DEFAULT_MAX_RETRIES = 2
BACKOFF = 0.2
MAX_RETRY_WAIT = 8.0
RETRY_STATUSES = frozenset({502, 503, 504})
SAFE_METHODS = frozenset({"GET", "HEAD"})

F = TypeVar("F", bound=Callable[..., Any])


def route(method: str, path: str) -> Callable[[F], F]:
    """Marks a resource method as the client of the admin (or files) route ``method path``, in the
    contract's spelling (``/admin/v1/models/{name}``). A unit test checks every declared route has one."""

    def mark(fn: F) -> F:
        fn.__route__ = (method, path)  # type: ignore[attr-defined]
        return fn

    return mark


ADMIN = "/admin/v1"


def quote_name(value: str) -> str:
    """A name in a path: model names keep their ``/`` and ``:`` (the routes take ``{name:.+}``)."""
    return quote(value, safe="/:@")


def flag(value: bool | None) -> str | None:
    return None if value is None else str(value).lower()


def without_none(**fields: Any) -> dict[str, Any]:
    """A request body, or a query, without the fields left out (None)."""
    return {k: v for k, v in fields.items() if v is not None}


def find_server_url(settings: Settings) -> str:
    """``SUPEROLLAMA_URL`` if set, else the URL a live ``serve`` on this home wrote, else HOST:PORT."""
    import psutil

    if settings.url:
        return settings.url.rstrip("/")
    marker = settings.home / "server.json"
    try:
        info = orjson.loads(marker.read_bytes())
        if psutil.pid_exists(int(info["pid"])):
            return str(info["url"]).rstrip("/")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return settings.server_url


def default_settings() -> Settings:
    from superollama.settings import Settings

    return Settings.from_env()


def headers(api_key: str | None) -> dict[str, str]:
    out = {"User-Agent": USER_AGENT}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


def call_timeout(timeout: float) -> httpx.Timeout:
    """The timeout of one plain call that the server bounds by a longer time than the client's."""
    import httpx

    return httpx.Timeout(timeout, connect=CONNECT_TIMEOUT)


def timeouts(timeout: float) -> tuple[httpx.Timeout, httpx.Timeout]:
    """The timeout of plain calls, and of streams (shorter between two lines)."""
    import httpx

    plain = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT)
    stream = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT, read=min(timeout, STREAM_READ_TIMEOUT))
    return plain, stream


def status_error(response: httpx.Response) -> APIStatusError:
    """The error an answer of status >= 400 raises, its message from the error envelope (OpenAI's
    ``{"error": {"message", "type", "code"}}``, Ollama's ``{"error": "..."}``) or the body."""
    code: str | None = None
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        message = response.text or response.reason_phrase
    else:
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message", err))
            raw = err.get("code") or err.get("type")
            code = str(raw) if raw is not None else None
        else:
            message = str(err or body)
    return error_for_status(response.status_code, message or f"HTTP {response.status_code}", code)


@contextmanager
def talking(base_url: str) -> Iterator[None]:
    """httpx's transport errors and unreadable answers as one-line ``APIConnectionError`` s."""
    import httpx

    try:
        yield
    except httpx.ConnectError as exc:
        raise APIConnectionError(
            f"could not connect to {base_url}: is `superollama serve` running?", status=0
        ) from exc
    except httpx.TimeoutException as exc:
        what = "connecting to" if isinstance(exc, httpx.ConnectTimeout) else "waiting for"
        raise APITimeoutError(f"timed out {what} the server at {base_url}") from exc
    except httpx.TransportError as exc:
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise APIConnectionError(f"lost the connection to the server at {base_url} ({why})") from exc
    except orjson.JSONDecodeError as exc:
        raise APIConnectionError(f"the server at {base_url} sent an answer that is not JSON") from exc


def retry_wait(
    error: Exception, method: str, idempotent: bool | None, attempt: int, max_retries: int
) -> float | None:
    """Seconds to wait before trying ``error`` 's call again, or None: do not."""
    if attempt >= max_retries:
        return None
    repeatable = idempotent if idempotent is not None else method in SAFE_METHODS
    cause = error.__cause__
    never_sent = type(cause).__name__ in ("ConnectError", "ConnectTimeout")
    if isinstance(error, APIConnectionError) and (never_sent or repeatable):
        return float(BACKOFF * 2**attempt)
    if isinstance(error, APIStatusError) and repeatable and error.status in RETRY_STATUSES:
        after = error.retry_after
        return min(after, MAX_RETRY_WAIT) if after is not None else float(BACKOFF * 2**attempt)
    return None


def with_retry_after(error: APIStatusError, response: httpx.Response) -> APIStatusError:
    value = response.headers.get("Retry-After", "")
    if re.fullmatch(r"\d+(\.\d+)?", value.strip()):
        error.retry_after = float(value)
    return error


def decode(response: httpx.Response) -> Any:
    """A success answer's JSON (None when empty)."""
    return orjson.loads(response.content) if response.content else None


def decode_line(line: str) -> dict[str, Any]:
    value = orjson.loads(line)
    if not isinstance(value, dict):
        raise orjson.JSONDecodeError("not an object", line, 0)
    return value
