"""``UtcStamps``: the text ``datetime`` makes of a timestamp, at the edges of rounding too."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from superollama.core.stamps import UtcStamps

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def _times() -> list[float]:
    rng = random.Random(17)
    times = [T0 + rng.random() * 3e7 for _ in range(20_000)]
    # each microsecond's edge of rounding, at the turn of a minute and of a day
    times += [T0 + s + k / 1e6 + d for s in (0, 59, 86_399) for k in range(0, 1_000_000, 9_973)
              for d in (0.0, 5e-7, 4.9e-7, -5e-7)]  # fmt: skip
    times += [T0 + i * 0.5e-6 for i in range(-5, 6)]
    times += [T0 - 1 + d for d in (0.9999995, 0.99999949, 0.9999994, 0.9995, 0.0005, 0.0004999)]
    return [*times, *reversed(times)]  # and back: the cached second changes both ways


def test_the_ledger_text_is_datetimes_to_the_microsecond() -> None:
    stamps = UtcStamps("%Y-%m-%d %H:%M:%S")
    for t in _times():
        second, us = stamps(t)
        assert f"{second}.{us:06d}" == datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f"), t


def test_the_access_line_time_is_isoformat_to_the_millisecond() -> None:
    stamps = UtcStamps("%Y-%m-%dT%H:%M:%S")
    for t in _times():
        second, us = stamps(t)
        expected = datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")
        assert f"{second}.{us // 1000:03d}+00:00" == expected, t


def test_half_a_microsecond_before_the_year_rounds_into_it() -> None:
    assert UtcStamps("%Y-%m-%d %H:%M:%S")(T0 - 5e-7) == ("2026-01-01 00:00:00", 0)
    assert UtcStamps("%Y-%m-%d %H:%M:%S")(T0 - 7e-7) == ("2025-12-31 23:59:59", 999999)
