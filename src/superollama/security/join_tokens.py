"""Join tokens: ``soj-`` + 8 visible characters + 40 random URL-safe characters (240 bits).

A join token lets a machine join the cluster (``POST /admin/v1/nodes/join``) and nothing else: it is not
of the API keys' shape (``so-…``), is kept in a table of its own, and the key cache never sees it — sent
anywhere else it is an unknown key (401). Stored as its SHA-256, like an API key (random, so a plain hash
is enough)."""

from __future__ import annotations

import secrets
import string

from superollama.security.keys import NewKey, hash_key

__all__ = ["JOIN_SCHEME", "generate_join_token", "looks_like_join_token"]

JOIN_SCHEME = "soj-"
_PREFIX_CHARS = 8
_SECRET_BYTES = 30
_ALPHABET = string.ascii_lowercase + string.digits


def generate_join_token() -> NewKey:
    prefix = JOIN_SCHEME + "".join(secrets.choice(_ALPHABET) for _ in range(_PREFIX_CHARS))
    token = prefix + secrets.token_urlsafe(_SECRET_BYTES)
    return NewKey(key=token, prefix=prefix, hash=hash_key(token))


def looks_like_join_token(value: str) -> bool:
    return value.startswith(JOIN_SCHEME) and len(value) == len(JOIN_SCHEME) + _PREFIX_CHARS + 40
