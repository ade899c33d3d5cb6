"""Security: API keys and roles, model permissions, rate limits (memory or Redis) and budgets.

    keys = KeyCache(registry.keys); await keys.reload()
    limiter = MemoryRateLimiter()                      # or RedisRateLimiter(settings.redis_url, …)
    budgets = Budgets(PriceTable.parse(settings.price_table), limiter)
    security = Security(keys, limiter, budgets, auth_required=resolve_auth(settings.auth, settings.host))

This room imports only ``core``, ``errors`` and the standard library (and ``redis`` in ``redis_limits``,
imported on first use so that ``import superollama.security`` stays light).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from superollama.security.admission import Security, bearer_key, estimate_tokens
from superollama.security.bind import AUTH_MODES, AuthMode, check_bind_safety, is_loopback, resolve_auth
from superollama.security.budgets import PERIODS, Budgets, Price, PriceTable, SpendStore
from superollama.security.keys import (
    KeyCache,
    KeySource,
    ModelLimit,
    NewKey,
    Principal,
    generate_key,
    hash_key,
)
from superollama.security.limits import Admission, MemoryRateLimiter, RateLimiter
from superollama.security.manage import IssuedKey, KeyManager, KeySpec, key_state, parse_duration
from superollama.security.sessions import Session, Sessions

if TYPE_CHECKING:
    from superollama.security.redis_limits import RedisRateLimiter

__all__ = [
    "AUTH_MODES",
    "PERIODS",
    "Admission",
    "AuthMode",
    "Budgets",
    "IssuedKey",
    "KeyCache",
    "KeyManager",
    "KeySource",
    "KeySpec",
    "MemoryRateLimiter",
    "ModelLimit",
    "NewKey",
    "Price",
    "PriceTable",
    "Principal",
    "RateLimiter",
    "RedisRateLimiter",
    "Security",
    "Session",
    "Sessions",
    "SpendStore",
    "bearer_key",
    "check_bind_safety",
    "estimate_tokens",
    "generate_key",
    "hash_key",
    "is_loopback",
    "key_state",
    "parse_duration",
    "resolve_auth",
]


def __getattr__(name: str) -> Any:
    if name == "RedisRateLimiter":
        from superollama.security.redis_limits import RedisRateLimiter

        return RedisRateLimiter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
