"""The CLI's client of the admin API. It finds the server, speaks HTTP, and maps errors to messages.

Every failure to talk to the server (refused, timed out, dropped mid-answer, an unreadable answer) is an
``ApiError`` with one line of text, never an httpx exception. Requests wait up to ``REQUEST_TIMEOUT``
(some admin calls load or drain models); progress streams, where the server repeats its latest line every
few seconds, give up after ``STREAM_READ_TIMEOUT`` seconds of silence.

``httpx`` is imported when a client is made, not with this module: ``superollama serve`` (which imports
the CLI but never talks to itself) keeps its 4 MB out of the server's memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson
import psutil

from superollama import __version__
from superollama.settings import Settings

if TYPE_CHECKING:
    import httpx

__all__ = ["AdminClient", "ApiError", "find_server_url"]

USER_AGENT = f"superollama-cli/{__version__}"
CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 600.0
STREAM_READ_TIMEOUT = 120.0


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def find_server_url(settings: Settings) -> str:
    """``SUPEROLLAMA_URL`` if set, else the URL a live ``serve`` on this home wrote, else HOST:PORT."""
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


def _message(response: httpx.Response) -> str:
    import httpx

    try:
        body = orjson.loads(response.read())
    except (orjson.JSONDecodeError, httpx.ResponseNotRead):
        return response.text or response.reason_phrase
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("message", err))
    return str(err or body)


class AdminClient:
    """``api_key`` (``SUPEROLLAMA_API_KEY`` or ``--api-key``) goes out as ``Authorization: Bearer``."""

    def __init__(
        self, base_url: str, api_key: str | None = None, *, timeout: float = REQUEST_TIMEOUT
    ) -> None:
        self.base_url = base_url
        headers = {"User-Agent": USER_AGENT}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        import httpx

        self._httpx = httpx
        self._http = httpx.Client(
            base_url=base_url, timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT), headers=headers
        )
        self._stream_timeout = httpx.Timeout(
            timeout, connect=CONNECT_TIMEOUT, read=min(timeout, STREAM_READ_TIMEOUT)
        )

    @contextmanager
    def _talking(self) -> Iterator[None]:
        """httpx's transport errors and unreadable answers as one-line ``ApiError`` messages."""
        httpx = self._httpx
        try:
            yield
        except httpx.ConnectError as exc:
            raise ApiError(
                0, f"could not connect to {self.base_url}: is `superollama serve` running?"
            ) from exc
        except httpx.TimeoutException as exc:
            what = "connecting to" if isinstance(exc, httpx.ConnectTimeout) else "waiting for"
            raise ApiError(0, f"timed out {what} the server at {self.base_url}") from exc
        except httpx.TransportError as exc:
            why = " ".join(str(exc).split()) or type(exc).__name__
            raise ApiError(0, f"lost the connection to the server at {self.base_url} ({why})") from exc
        except orjson.JSONDecodeError as exc:
            raise ApiError(0, f"the server at {self.base_url} sent an answer that is not JSON") from exc

    def close(self) -> None:
        self._http.close()

    def reachable(self) -> bool:
        try:
            return self._http.get("/health", timeout=2).status_code == 200
        except self._httpx.HTTPError:
            return False

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._talking():
            response = self._http.request(method, path, **kwargs)
            if response.status_code >= 400:
                raise ApiError(response.status_code, _message(response))
            return orjson.loads(response.content) if response.content else None

    def stream_lines(self, method: str, path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """NDJSON lines of a streamed admin response (pull progress)."""
        stream = self._http.stream(method, path, timeout=self._stream_timeout, **kwargs)
        with self._talking(), stream as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response.status_code, _message(response))
            for line in response.iter_lines():
                if line.strip():
                    yield orjson.loads(line)

    def stream_chat(self, body: dict[str, Any]) -> Iterator[str]:
        """Content deltas of a streamed ``/v1/chat/completions`` (the REPL's one use of the data plane)."""
        with self._talking():
            yield from self._chat_deltas(body)

    def _chat_deltas(self, body: dict[str, Any]) -> Iterator[str]:
        with self._http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response.status_code, _message(response))
            event = None
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                    continue
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = orjson.loads(data)
                if event == "error" or "error" in chunk:
                    err = chunk.get("error", {})
                    raise ApiError(503, str(err.get("message", err)) if isinstance(err, dict) else str(err))
                for choice in chunk.get("choices", []):
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield content
