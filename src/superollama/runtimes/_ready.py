"""The one-line handshake a worker process prints on its control pipe (stdout) once it is up or has failed.

    SUPEROLLAMA_READY {"address": "http://127.0.0.1:39455", "pid": 1234}
    SUPEROLLAMA_FAILED {"error": "model file not found: /x.gguf"}

Kept free of heavy imports: the worker (child) imports it before anything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["FAILED", "READY", "Signal", "format_failed", "format_ready", "parse_line"]

READY = "SUPEROLLAMA_READY"
FAILED = "SUPEROLLAMA_FAILED"


@dataclass(frozen=True)
class Signal:
    """A parsed handshake line: ``kind`` is ``READY`` or ``FAILED``."""

    kind: str
    payload: dict[str, Any]


def format_ready(address: str, pid: int) -> str:
    return f"{READY} {json.dumps({'address': address, 'pid': pid})}\n"


def format_failed(error: str) -> str:
    return f"{FAILED} {json.dumps({'error': error})}\n"


def parse_line(line: str) -> Signal | None:
    """The handshake in ``line``, or None for any other line (or a malformed payload)."""
    kind, _, rest = line.strip().partition(" ")
    if kind not in (READY, FAILED):
        return None
    try:
        payload = json.loads(rest)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    return Signal(kind, payload)
