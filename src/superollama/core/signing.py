"""Webhook signatures: what a receiver checks to know a delivery is ours and fresh.

Every delivery carries ``X-Superollama-Signature: t=<unix seconds>,v1=<hex>``, where ``<hex>`` is
HMAC-SHA256, keyed with the hook's secret, of ``b"<t>." + body`` (the exact bytes received). A receiver
recomputes it and refuses a timestamp further than ``tolerance`` seconds from its clock, so a captured
delivery cannot be replayed later::

    from superollama.core.signing import verify_signature

    if not verify_signature(secret, request_body, request.headers["X-Superollama-Signature"]):
        return 400
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["SIGNATURE_HEADER", "sign", "signature_header", "verify_signature"]

SIGNATURE_HEADER = "X-Superollama-Signature"
TOLERANCE = 300.0  # seconds a signature's timestamp may be from the receiver's clock


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``b"<timestamp>." + body`` keyed with ``secret``."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={sign(secret, t, body)}"


def verify_signature(
    secret: str, body: bytes, header: str, *, tolerance: float = TOLERANCE, now: float | None = None
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a time within ``tolerance`` of ``now``."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", ()))
