"""Budgets: what a request costs (a price table per model pattern) and what a key has spent this period.

Prices are USD per 1M input (prompt) and output (completion) tokens; a model no entry matches costs 0 (local
models, unless the table says otherwise). The spend per key and period lives in the rate limiter's store
(memory or Redis), so that admission checks budget and rate limits in the same round trip.

Price table (``SUPEROLLAMA_PRICE_TABLE``: inline JSON, or the path of a JSON or YAML file)::

    {"openai/gpt-4o*": {"input": 2.5, "output": 10}, "smollm2:*": {"input": 0.01, "output": 0.02}}

An exact name wins over patterns; among patterns, the most specific (longest) one wins.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from superollama.errors import InvalidRequest
from superollama.security.keys import Principal

__all__ = ["PERIODS", "Budgets", "Price", "PriceTable", "SpendStore", "period_label"]

PERIODS = ("day", "week", "month", "total")
_DAY = 86_400


def period_label(period: str, now: float) -> tuple[str, int]:
    """The current budget period of a key as a label (``2026-01-02``, ``2026-W01``, ``2026-01``,
    ``total``; UTC calendar) and how long its counter must live, in seconds (0: forever)."""
    if period not in PERIODS:
        raise InvalidRequest(f"budget period must be one of {', '.join(PERIODS)}", param="budget_period")
    return _label_of_day(period, int(now // _DAY))


@functools.lru_cache(maxsize=64)
def _label_of_day(period: str, day: int) -> tuple[str, int]:
    """``period_label`` for a UTC day number (labels change only at midnight: computed once a day)."""
    at = datetime.fromtimestamp(day * _DAY, UTC)
    if period == "day":
        return at.strftime("%Y-%m-%d"), 2 * _DAY
    if period == "week":
        year, week, _ = at.isocalendar()
        return f"{year}-W{week:02d}", 8 * _DAY
    if period == "month":
        return at.strftime("%Y-%m"), 32 * _DAY
    return "total", 0


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens."""

    input: float = 0.0
    output: float = 0.0


_FREE = Price()  # a model without a price (one value: a frozen dataclass is slow to make)
_MATCHES_KEPT = 4096  # model names whose pattern match is remembered


class PriceTable:
    def __init__(self, prices: Mapping[str, Price] | None = None) -> None:
        prices = dict(prices or {})
        self._exact = {k: v for k, v in prices.items() if not _is_pattern(k)}
        self._patterns = sorted(
            ((k, v) for k, v in prices.items() if _is_pattern(k)), key=lambda kv: (-len(kv[0]), kv[0])
        )
        self._priced = bool(prices)
        self._matched: dict[str, Price] = {}  # model → the price its first matching pattern gives

    @classmethod
    def parse(cls, value: str | None) -> PriceTable:
        """From the ``price_table`` setting: empty, inline JSON (``{…}``), or a JSON/YAML file path."""
        if value is None or not value.strip():
            return cls()
        text = value.strip()
        if not text.startswith("{"):
            path = Path(text).expanduser()
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise _bad(f"cannot read {path}: {exc.strerror or exc}") from exc
            if path.suffix.lower() in (".yaml", ".yml"):
                return cls.from_mapping(_yaml(text))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _bad(f"not valid JSON: {exc}") from None
        return cls.from_mapping(data)

    @classmethod
    def from_mapping(cls, data: Any) -> PriceTable:
        if not isinstance(data, Mapping):
            raise _bad("expected an object of model pattern → {input, output}")
        prices: dict[str, Price] = {}
        for pattern, entry in data.items():
            if not isinstance(entry, Mapping) or not set(entry) <= {"input", "output"}:
                raise _bad(f"{pattern!r}: expected {{'input': USD per 1M, 'output': USD per 1M}}")
            values = [entry.get(k, 0.0) for k in ("input", "output")]
            if not all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in values):
                raise _bad(f"{pattern!r}: prices must be numbers ≥ 0")
            prices[str(pattern)] = Price(float(values[0]), float(values[1]))
        return cls(prices)

    def price(self, model: str) -> Price:
        exact = self._exact.get(model)
        if exact is not None:
            return exact
        found = self._matched.get(model)
        if found is not None:
            return found
        found = next((p for pattern, p in self._patterns if fnmatch.fnmatchcase(model, pattern)), _FREE)
        if len(self._matched) < _MATCHES_KEPT:  # the patterns once a model name, not once a request
            self._matched[model] = found
        return found

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for one request (0.0 at once with no prices: every request asks)."""
        if not self._priced:
            return 0.0
        p = self.price(model)
        return (max(0, prompt_tokens) * p.input + max(0, completion_tokens) * p.output) / 1_000_000


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(f"price table: {message}", param="price_table")


def _yaml(text: str) -> Any:
    try:
        yaml: Any = importlib.import_module("yaml")
    except ImportError:  # pragma: no cover - PyYAML ships with the test tools
        raise _bad("a YAML price table needs PyYAML (pip install pyyaml), or use JSON") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _bad(f"not valid YAML: {exc}") from None


class SpendStore(Protocol):
    """Where spend per key and period is counted: the rate limiter's store (memory or Redis)."""

    async def add_spend(self, principal: Principal, amount: float) -> float: ...
    async def spent(self, principal: Principal) -> float: ...


class Budgets:
    """Prices plus spend. Admission refuses a key whose spend has reached its budget (the limiter checks it
    in the same round trip as the rate limits); settlement adds each request's cost."""

    def __init__(self, prices: PriceTable, store: SpendStore) -> None:
        self.prices = prices
        self._store = store

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        return self.prices.cost(model, prompt_tokens, completion_tokens)

    async def record_spend(self, principal: Principal, cost: float) -> float:
        """Add ``cost`` to the key's spend in its current period; returns the new total."""
        if cost <= 0:
            return await self._store.spent(principal)
        return await self._store.add_spend(principal, cost)

    async def spent(self, principal: Principal) -> float:
        return await self._store.spent(principal)
