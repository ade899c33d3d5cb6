"""Upstream credentials: the secrets a connection's URL may carry, kept apart from the URL, and what a
sender attaches to each request at send time.

A URL given to ``superollama connect`` may carry secrets: the user info (``http://user:password@host``)
and well-known query parameters (``?api-key=…``). ``split_url`` cuts it into a *public* URL (safe to
store, show and put in the routing snapshot) and the ``UrlSecrets`` (stored encrypted, like
``--api-key``). The whole user info is secret, user name included: some services take a token as the
user name alone (``https://TOKEN@host``), so the name is not safe to show either. A query parameter is
secret when its name, lower-cased, is one of ``SECRET_QUERY_PARAMS``; the others stay in the public URL.

Shown anywhere (CLI, admin API, events, logs), a URL is ``redacted_url``: ``http://***@host/v1?api-key=***``.
``redact_text`` does the same to URLs inside free text (an error message), as a last line of defence.

The routing snapshot names a connection's credential (``Endpoint.credential``) instead of carrying it;
whoever sends resolves that name through a ``CredentialSource`` living in its own process. User info
becomes ``Authorization: Basic …``; an API key ``Authorization: Bearer …`` (and wins when both exist);
secret query parameters are appended to the request's path.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

__all__ = [
    "REDACTED",
    "SECRET_QUERY_PARAMS",
    "Credential",
    "CredentialSource",
    "UrlSecrets",
    "credential_for",
    "redact_text",
    "redacted_url",
    "split_url",
]

REDACTED: Final = "***"

# Query parameters that carry a secret in the APIs people connect to (Azure OpenAI's ``api-key``,
# Google's ``key``, signed URLs' ``sig``/``signature``, generic tokens and passwords).
SECRET_QUERY_PARAMS: Final = frozenset(
    {
        "api-key",
        "api_key",
        "apikey",
        "key",
        "token",
        "access_token",
        "auth",
        "password",
        "secret",
        "sig",
        "signature",
    }
)

_SECRET_PARAM = "|".join(re.escape(p) for p in sorted(SECRET_QUERY_PARAMS, key=len, reverse=True))
_USERINFO_IN_TEXT = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@?#]+@")
_PARAM_IN_TEXT = re.compile(rf"([?&;])({_SECRET_PARAM})=[^&#\s'\"]*", re.IGNORECASE)


@dataclass(frozen=True)
class UrlSecrets:
    """What ``split_url`` took out of a URL: the raw user info (percent-encoded as written, or None) and
    the raw ``name=value`` query pieces that are secret, in their order."""

    userinfo: str | None = field(default=None, repr=False)
    query: tuple[str, ...] = field(default=(), repr=False)

    def __bool__(self) -> bool:
        return self.userinfo is not None or bool(self.query)

    def to_json(self) -> dict[str, Any]:
        return {"userinfo": self.userinfo, "query": list(self.query)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UrlSecrets:
        userinfo = data.get("userinfo")
        return cls(
            str(userinfo) if userinfo is not None else None, tuple(str(p) for p in data.get("query") or ())
        )


def _param_name(piece: str) -> str:
    return unquote_plus(piece.partition("=")[0]).strip().lower()


def split_url(url: str) -> tuple[str, UrlSecrets]:
    """``(public URL, secrets)``: the URL without its user info and secret query parameters (the other
    parameters keep their order and spelling), and what was taken out."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    public_query: list[str] = []
    secret_query: list[str] = []
    for piece in parts.query.split("&") if parts.query else ():
        (secret_query if _param_name(piece) in SECRET_QUERY_PARAMS else public_query).append(piece)
    public = urlunsplit((parts.scheme, hostport, parts.path, "&".join(public_query), parts.fragment))
    return public, UrlSecrets(userinfo if at else None, tuple(secret_query))


def redacted_url(public: str, secrets: UrlSecrets) -> str:
    """The URL as it may be shown: ``***`` for the user info and for each secret parameter's value."""
    if not secrets:
        return public
    parts = urlsplit(public)
    netloc = f"{REDACTED}@{parts.netloc}" if secrets.userinfo is not None else parts.netloc
    hidden = [f"{piece.partition('=')[0]}={REDACTED}" for piece in secrets.query]
    query = "&".join([*(parts.query.split("&") if parts.query else ()), *hidden])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` with the user info and secret query values of every URL in it replaced by ``***``."""
    text = _USERINFO_IN_TEXT.sub(rf"\1{REDACTED}@", text)
    return _PARAM_IN_TEXT.sub(rf"\1\2={REDACTED}", text)


@dataclass(frozen=True)
class Credential:
    """What a sender attaches to every request to one connection: headers, and raw query pieces
    (``name=value``, already encoded) appended to the path. Lives only in the sending process."""

    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    query: tuple[str, ...] = field(default=(), repr=False)

    def path(self, path: str) -> str:
        """``path`` (which may have a query already) with the credential's query pieces appended."""
        if not self.query:
            return path
        return path + ("&" if "?" in path else "?") + "&".join(self.query)

    def to_json(self) -> dict[str, Any]:
        return {"headers": [list(h) for h in self.headers], "query": list(self.query)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Credential:
        headers = tuple((str(k), str(v)) for k, v in data.get("headers") or ())
        return cls(headers, tuple(str(p) for p in data.get("query") or ()))


def credential_for(secrets: UrlSecrets, api_key: str | None) -> Credential:
    """The credential of a connection: its API key as a Bearer token (else its user info as Basic
    authentication) and its secret query parameters."""
    headers: tuple[tuple[str, str], ...] = ()
    if api_key:
        headers = (("Authorization", f"Bearer {api_key}"),)
    elif secrets.userinfo is not None:
        user, _, password = secrets.userinfo.partition(":")
        pair = f"{unquote(user)}:{unquote(password)}".encode()
        headers = (("Authorization", "Basic " + base64.b64encode(pair).decode("ascii")),)
    return Credential(headers, secrets.query)


class CredentialSource(Protocol):
    """Where a sender finds the credential an ``Endpoint.credential`` names (in its own process)."""

    def credential(self, ref: str) -> Credential | None:
        """The credential named ``ref``; None when this process has none of that name."""
        ...
