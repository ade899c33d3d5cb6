"""Price tables (inline JSON, JSON and YAML files), cost, budget periods, spend through ``Budgets``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from superollama.errors import InvalidRequest
from superollama.security import Budgets, MemoryRateLimiter, Price, PriceTable, Principal
from superollama.security.budgets import period_label

TABLE = json.dumps(
    {
        "openai/gpt-4o*": {"input": 2.5, "output": 10},
        "openai/gpt-4o-mini": {"input": 0.15, "output": 0.6},
        "*/*": {"input": 1, "output": 1},
        "smollm2:*": {"output": 0.02},
    }
)


def test_inline_json_exact_beats_patterns_and_longer_patterns_win() -> None:
    prices = PriceTable.parse(TABLE)
    assert prices.price("openai/gpt-4o-mini") == Price(0.15, 0.6)  # exact
    assert prices.price("openai/gpt-4o-2024-08-06") == Price(2.5, 10.0)  # longest pattern
    assert prices.price("acme/model") == Price(1.0, 1.0)
    assert prices.price("smollm2:135m") == Price(0.0, 0.02)
    assert prices.price("llama3:8b") == Price()  # local, unlisted: free
    assert prices.cost("openai/gpt-4o", 1_000_000, 500_000) == pytest.approx(7.5)
    assert prices.cost("openai/gpt-4o-mini", 1000, 1000) == pytest.approx(0.00075)
    assert prices.cost("llama3:8b", 10**9, 10**9) == 0
    # asked again (the answer remembered once a model name): the same prices
    for _ in range(2):
        assert prices.price("openai/gpt-4o-2024-08-06") == Price(2.5, 10.0)
        assert prices.price("acme/model") == Price(1.0, 1.0) and prices.price("llama3:8b") == Price()
    assert PriceTable().cost("openai/gpt-4o", 10**9, 10**9) == 0  # no table: nothing costs anything


def test_a_price_table_remembers_a_bounded_number_of_model_names() -> None:
    prices = PriceTable.parse(TABLE)
    for i in range(5000):  # more names than are remembered: each still gets its pattern's price
        assert prices.price(f"acme/m{i}") == Price(1.0, 1.0)
        assert prices.price(f"m{i}") == Price()
    assert len(prices._matched) == 4096


def test_json_file(tmp_path: Path) -> None:
    json_file = tmp_path / "prices.json"
    json_file.write_text(TABLE)
    assert PriceTable.parse(str(json_file)).price("acme/x") == Price(1.0, 1.0)
    assert PriceTable.parse(None).price("x") == Price() == PriceTable.parse("  ").price("x")


def test_yaml_file(tmp_path: Path) -> None:
    pytest.importorskip("yaml", reason="YAML price tables need PyYAML (optional)")
    yaml_file = tmp_path / "prices.yaml"
    yaml_file.write_text('"openai/*":\n  input: 3\n  output: 12\n')
    assert PriceTable.parse(str(yaml_file)).price("openai/o1") == Price(3.0, 12.0)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('{"m": {"input": -1}}', "≥ 0"),
        ('{"m": {"input": "cheap"}}', "numbers"),
        ('{"m": {"inptu": 1}}', "expected"),
        ('{"m": [1, 2]}', "expected"),
        ("/no/such/prices.json", "cannot read"),
    ],
)
def test_bad_tables_say_what_is_wrong(value: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest, match="price table") as info:
        PriceTable.parse(value)
    assert fragment in info.value.message and info.value.param == "price_table"


def test_periods_are_utc_calendar_periods() -> None:
    at = datetime(2026, 1, 1, 0, 30, tzinfo=UTC).timestamp()
    assert period_label("day", at) == ("2026-01-01", 2 * 86400)
    assert period_label("week", at) == ("2026-W01", 8 * 86400)
    assert period_label("month", at) == ("2026-01", 32 * 86400)
    assert period_label("total", at) == ("total", 0)
    assert period_label("week", datetime(2027, 1, 1, tzinfo=UTC).timestamp())[0] == "2026-W53"
    with pytest.raises(InvalidRequest):
        period_label("fortnight", at)


async def test_budgets_record_spend_in_the_limiters_store() -> None:
    limiter = MemoryRateLimiter()
    budgets = Budgets(PriceTable.parse(TABLE), limiter)
    p = Principal("k", "n", "so-abcdefgh", budget_usd=1.0)
    cost = budgets.cost("openai/gpt-4o", 100_000, 10_000)
    assert cost == pytest.approx(0.35)
    assert await budgets.record_spend(p, cost) == pytest.approx(0.35)
    assert await budgets.record_spend(p, 0) == pytest.approx(0.35)
    assert await budgets.spent(p) == pytest.approx(0.35)
    assert await limiter.spent(Principal("other", "n", "so-x")) == 0
