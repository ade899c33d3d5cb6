"""Web UI sessions: a signed cookie that names an admin or viewer key, and the CSRF token bound to it.

Why signed rather than stored: every gateway process (the primary and the replicas of ``serve --workers
N``) must recognise a session — the playground's ``/v1/chat/completions`` is served by whichever worker
took the connection — without a database read on the request path. The cookie value is

    v1.<key id>.<key prefix>.<expiry, unix seconds>.<nonce>.<HMAC-SHA256 of the rest>

signed with ``HOME/ui-session.key`` (32 random bytes, mode 0600, made once and shared by the workers).
It carries no key material: a stolen cookie is bounded by its expiry, by the key's own life (revoking or
rotating the key ends its sessions, see ``KeyCache.by_id``) and by ``SameSite=Strict``.

CSRF: every change made with a session (any method but GET/HEAD/OPTIONS) must carry ``X-CSRF-Token``
(or the ``csrf_token`` form field for the UI's own forms), the HMAC of the cookie under another label;
pages embed it, a cross-site page cannot read it. Signing out adds the session to this process's list of
ended sessions (the primary serves the admin API and the UI, so that is where it matters).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from superollama.errors import CsrfRejected, Unauthorized

__all__ = ["COOKIE", "CSRF_FIELD", "CSRF_HEADER", "SAFE_METHODS", "Session", "Sessions"]

COOKIE = "so_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_VERSION = "v1"
_KEY_FILE = "ui-session.key"


@dataclass(frozen=True)
class Session:
    """A verified session: whose key, until when, and the CSRF token its changes must carry."""

    key_id: str
    prefix: str
    expires_at: float
    cookie: str
    csrf: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signing_key(path: Path) -> bytes:
    """The key in ``path``, made (0600, exclusively: two workers never disagree) on first use."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
    for _ in range(50):  # another worker may be between its open and its write
        data = path.read_bytes()
        if len(data) >= 32:
            return data
        time.sleep(0.01)
    raise OSError(f"{path} holds no session key")


class Sessions:
    """Issues and verifies session cookies. ``ttl``: seconds a session lasts after sign-in."""

    def __init__(self, key: bytes, ttl: float, *, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self.ttl = ttl
        self._clock = clock
        self._ended: dict[str, float] = {}  # signed-out cookie → its expiry (forgotten once expired)

    @classmethod
    def of_home(cls, home: Path, ttl: float) -> Sessions:
        return cls(_signing_key(home / _KEY_FILE), ttl)

    def _mac(self, label: str, value: str) -> str:
        return _b64(hmac.new(self._key, f"{label}:{value}".encode(), hashlib.sha256).digest())

    def issue(self, key_id: str, prefix: str) -> Session:
        expires = int(self._clock() + self.ttl)
        body = ".".join((_VERSION, key_id, prefix, str(expires), _b64(secrets.token_bytes(12))))
        cookie = f"{body}.{self._mac('session', body)}"
        return Session(key_id, prefix, float(expires), cookie, self._mac("csrf", cookie))

    def verify(self, cookie: str) -> Session:
        """The session a cookie names; ``Unauthorized`` when it is forged, expired or signed out."""
        body, _, mac = cookie.rpartition(".")
        parts = body.split(".")
        signed = hmac.compare_digest(mac, self._mac("session", body))
        if len(parts) != 5 or parts[0] != _VERSION or not signed:
            raise Unauthorized("invalid session: sign in again")
        _, key_id, prefix, expires, _nonce = parts
        if not expires.isdigit() or float(expires) <= self._clock():
            raise Unauthorized("the session has expired: sign in again")
        if cookie in self._ended:
            raise Unauthorized("the session has ended: sign in again")
        return Session(key_id, prefix, float(expires), cookie, self._mac("csrf", cookie))

    def check_csrf(self, session: Session, method: str, token: str | None) -> None:
        """A change (not GET/HEAD/OPTIONS) made with a session needs its CSRF token: 403 without it."""
        if method.upper() in SAFE_METHODS:
            return
        if not token or not hmac.compare_digest(token, session.csrf):
            raise CsrfRejected("missing or wrong CSRF token (send the X-CSRF-Token header the UI page holds)")

    def end(self, session: Session) -> None:
        """Sign out: this cookie no longer works here, even before it expires."""
        now = self._clock()
        self._ended = {c: t for c, t in self._ended.items() if t > now}
        self._ended[session.cookie] = session.expires_at
