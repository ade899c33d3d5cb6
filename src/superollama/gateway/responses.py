"""Small response helpers every HTTP edge (gateway, admin API) shares."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

__all__ = ["json_response"]


def json_response(data: Any, status: int = 200) -> web.Response:
    """``data`` as a JSON response (orjson: datetimes, dataclasses and numpy arrays included)."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
