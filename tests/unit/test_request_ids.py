"""Request ids drawn from a pool of OS randomness: 128 bits each, as uuid4, never repeated."""

from __future__ import annotations

from superollama.gateway.middleware import RequestIds


def test_ids_are_128_bit_hex_and_distinct_across_refills() -> None:
    ids = RequestIds()
    drawn = [ids.next() for _ in range(RequestIds._BATCH * 3 + 7)]  # three refills and some
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in drawn)
    assert len(set(drawn)) == len(drawn)


def test_two_generators_do_not_share_a_pool() -> None:
    a, b = RequestIds(), RequestIds()
    assert {a.next() for _ in range(50)}.isdisjoint({b.next() for _ in range(50)})
