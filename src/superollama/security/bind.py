"""Safe defaults: who must send a key, and whether ``serve`` may bind an address at all.

Ollama's open-by-default API left ~175k servers on the Internet. Here a server on a non-loopback address
refuses to start unless requests need a key, or the operator says ``--insecure`` on purpose.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from superollama.errors import UnsafeBind

__all__ = ["AUTH_MODES", "AuthMode", "check_bind_safety", "is_loopback", "resolve_auth"]

AuthMode = Literal["auto", "on", "off"]
AUTH_MODES: tuple[AuthMode, ...] = ("auto", "on", "off")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine: ``localhost``, 127.0.0.0/8, ``::1``.
    ``0.0.0.0``, ``::``, an empty host and other names are not."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def resolve_auth(mode: AuthMode, host: str, *, insecure: bool = False) -> bool | None:
    """What ``Security(auth_required=…)`` gets for the ``auth`` setting: ``on`` → True, ``off`` → False,
    ``auto`` → True on a non-loopback address (unless ``insecure``), else None: required once any key
    exists."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    return None if insecure or is_loopback(host) else True


def check_bind_safety(host: str, auth_configured: bool, insecure: bool) -> str | None:
    """Refuse (``UnsafeBind``) to serve on a non-loopback ``host`` unless requests need a key
    (``auth_configured``: ``auth=on``, or ``auto`` with at least one key) or ``insecure`` is set.

    Returns a warning to log when the server is open to the network on purpose (``insecure``), else None."""
    if is_loopback(host) or auth_configured:
        return None
    if insecure:
        return (
            f"serving on {host or 'every address'} WITHOUT authentication (--insecure): anyone who can "
            "reach this port can use and manage every model"
        )
    raise UnsafeBind(
        f"refusing to serve on {host or 'every address'} without authentication: anyone who can reach it "
        "could use and manage every model. Create an admin key first "
        "(`superollama keys create --name admin --role admin`, works without a server) and keep "
        "auth on (SUPEROLLAMA_AUTH=auto or on), bind 127.0.0.1, or pass --insecure to serve openly "
        "on purpose."
    )
