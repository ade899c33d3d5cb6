"""Canary analysis: the window ring, mergeable stats, and the decision as a pure function of them."""

from __future__ import annotations

import pytest

from superollama.core.canary import (
    BUCKETS,
    CanaryPolicy,
    TargetWindow,
    WindowStats,
    decide,
    parse_duration,
    parse_latency_bound,
    parse_percent,
)


def stats(latencies: list[float], errors: int = 0) -> WindowStats:
    w = TargetWindow(60)
    for i, latency in enumerate(latencies):
        w.record(10.0, latency, i < errors)
    return w.stats(10.0)


POLICY = CanaryPolicy(canary=10, step=20, every=1, max_error_rate=0.01, max_p95=0.2, min_samples=20)


def test_p95_of_the_histogram_is_within_a_bucket_of_the_exact_one() -> None:
    latencies = [0.010 + 0.001 * i for i in range(100)]  # 10 … 109 ms
    exact = sorted(latencies)[94]
    p95 = stats(latencies).p95
    assert p95 is not None and abs(p95 - exact) / exact < 0.1
    assert WindowStats().p95 is None and WindowStats().error_rate == 0.0


def test_a_window_forgets_slots_older_than_itself_and_merges_across_gateways() -> None:
    w = TargetWindow(10, slots=10)  # 1 s slots
    w.record(0.5, 0.05, True)
    w.record(5.5, 0.05, False)
    assert w.stats(6.0).count == 2 and w.stats(6.0).errors == 1
    assert w.stats(10.9).count == 1  # the slot of t=0.5 is out of the window
    w.record(20.2, 0.05, False)  # the ring wraps: the slot is reused from zero
    assert w.stats(20.5).count == 1
    merged = WindowStats.merge([stats([0.01] * 5, errors=1), stats([0.5] * 5)])
    assert (merged.count, merged.errors, len(merged.buckets), sum(merged.buckets)) == (10, 1, BUCKETS, 10)
    assert merged.p95 is not None and merged.p95 > 0.4  # the p95 of the union, not a mean of p95s


def test_too_few_canary_samples_hold() -> None:
    d = decide(10, stats([0.01] * 19), stats([0.01] * 100), POLICY)
    assert d.action == "hold" and d.weight == 10 and "19" in d.reason


def test_an_error_rate_above_the_bound_rolls_back() -> None:
    d = decide(30, stats([0.01] * 50, errors=1), stats([0.01] * 100), POLICY)
    assert d.action == "rollback" and d.weight == 0 and "2.00%" in d.reason


def test_a_p95_above_the_stable_one_plus_the_bound_rolls_back() -> None:
    d = decide(30, stats([0.05] * 50), stats([0.02] * 100), POLICY)
    assert d.action == "rollback" and "p95" in d.reason
    within = decide(30, stats([0.022] * 50), stats([0.02] * 100), POLICY)
    assert within.action == "step" and within.weight == 50


def test_relative_latency_needs_stable_samples_and_absolute_does_not() -> None:
    assert decide(10, stats([0.01] * 30), stats([0.01] * 3), POLICY).action == "hold"
    absolute = CanaryPolicy(max_p95=0.1, relative=False, min_samples=20)
    assert decide(10, stats([0.01] * 30), WindowStats(), absolute).action == "step"
    assert decide(10, stats([0.3] * 30), WindowStats(), absolute).action == "rollback"


def test_tiny_latency_differences_are_not_a_reason_to_roll_back() -> None:
    d = decide(10, stats([0.0015] * 30), stats([0.001] * 30), POLICY)  # +50 %, but half a millisecond
    assert d.action == "step"


def test_steps_up_then_promotes_once_the_next_step_reaches_100() -> None:
    ok = (stats([0.01] * 30), stats([0.01] * 30))
    assert decide(10, *ok, POLICY).weight == 30
    assert decide(70, *ok, POLICY).action == "step" and decide(70, *ok, POLICY).weight == 90
    promoted = decide(90, *ok, POLICY)
    assert promoted.action == "promote" and promoted.weight == 100


def test_policy_values_parse_as_the_cli_writes_them() -> None:
    assert parse_percent("1%", "x") == pytest.approx(0.01) and parse_percent(0.05, "x") == 0.05
    assert parse_latency_bound("+20%") == (pytest.approx(0.2), True)
    assert parse_latency_bound("800ms") == (pytest.approx(0.8), False)
    assert parse_duration("2m") == 120 and parse_duration("1s") == 1 and parse_duration("500ms") == 0.5
    for bad in ("fast", "-", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_percent("lots", "max error rate")
    assert CanaryPolicy.from_json(POLICY.as_json()) == POLICY
