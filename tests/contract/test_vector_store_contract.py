"""Every ``VectorStore`` passes this suite: sqlite-vec (on apsw) and LanceDB, on real files in a temporary
folder, with vectors made here so that the nearest neighbour of each query is known."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from superollama.errors import InvalidRequest
from superollama.plugins.rag.service import ENGINES, open_engine
from superollama.plugins.rag.vectors import Chunk, VectorStore, compile_filter, filtered_search

DIM = 16


@pytest.fixture(params=ENGINES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    engine = open_engine(request.param, tmp_path)
    try:
        yield engine
    finally:
        engine.close()


def _unit(rng: random.Random) -> list[float]:
    v = [rng.gauss(0, 1) for _ in range(DIM)]
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _chunks(file_id: str, vectors: list[list[float]], **attrs: str | int | bool) -> list[Chunk]:
    return [
        Chunk(file_id, i, f"{file_id} chunk {i}", v, f"{file_id}.txt", attrs) for i, v in enumerate(vectors)
    ]


def test_nearest_finds_each_stored_vector_first_with_score_one(store: VectorStore) -> None:
    rng = random.Random(1)
    vectors = [_unit(rng) for _ in range(50)]
    store.add("vs_a", _chunks("file-a", vectors, lang="en"))
    assert store.count("vs_a") == 50
    for i in (0, 17, 49):
        hits = store.nearest("vs_a", vectors[i], 3)
        assert hits[0].index == i
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].text == f"file-a chunk {i}" and hits[0].filename == "file-a.txt"
        assert dict(hits[0].attributes) == {"lang": "en"}
        assert hits[0].score >= hits[1].score >= hits[2].score


def test_collections_are_separate_and_deletion_removes_chunks(store: VectorStore) -> None:
    rng = random.Random(2)
    va, vb = [_unit(rng) for _ in range(10)], [_unit(rng) for _ in range(10)]
    store.add("vs_a", _chunks("file-a", va))
    store.add("vs_a", _chunks("file-b", vb))
    store.add("vs_b", _chunks("file-a", vb))
    assert {h.file_id for h in store.nearest("vs_a", vb[3], 20)} == {"file-a", "file-b"}
    assert store.nearest("vs_b", vb[3], 1)[0].file_id == "file-a"
    assert store.delete_file("vs_a", "file-b") == 10
    assert store.count("vs_a") == 10 and store.count("vs_b") == 10
    assert {h.file_id for h in store.nearest("vs_a", vb[3], 20)} == {"file-a"}
    store.drop("vs_a")
    assert store.count("vs_a") == 0 and store.nearest("vs_a", va[0], 5) == []
    assert store.count("vs_b") == 10
    store.drop("vs_missing")  # nothing to do


def test_a_query_of_another_dimension_is_refused(store: VectorStore) -> None:
    store.add("vs_a", _chunks("file-a", [_unit(random.Random(3))]))
    with pytest.raises(InvalidRequest, match="dimension"):
        store.nearest("vs_a", [1.0, 0.0], 1)


def test_filters_and_threshold_widen_the_search_until_enough_pass(store: VectorStore) -> None:
    rng = random.Random(4)
    query = _unit(rng)
    store.add("vs_a", _chunks("file-en", [_unit(rng) for _ in range(60)], lang="en", year=2023))
    rare = [[q + rng.gauss(0, 0.9) for q in query] for _ in range(3)]
    store.add("vs_a", _chunks("file-fr", rare, lang="fr", year=2025))
    where = compile_filter({"type": "eq", "key": "lang", "value": "fr"})
    hits = filtered_search(store, "vs_a", query, 5, where=where)
    assert [h.file_id for h in hits] == ["file-fr"] * 3
    both = compile_filter(
        {
            "type": "and",
            "filters": [
                {"type": "gte", "key": "year", "value": 2024},
                {"type": "in", "key": "lang", "value": ["fr", "de"]},
            ],
        }
    )
    assert len(filtered_search(store, "vs_a", query, 2, where=both)) == 2
    best = filtered_search(store, "vs_a", query, 63)
    cut = best[10].score
    above = filtered_search(store, "vs_a", query, 63, threshold=cut)
    assert len(above) >= 11 and all(h.score >= cut for h in above)
    assert len(above) < 63


def test_filters_are_checked_and_compare_like_openai() -> None:
    ne = compile_filter({"type": "ne", "key": "k", "value": "x"})
    assert ne({}) and ne({"k": "y"}) and not ne({"k": "x"})
    lt = compile_filter({"type": "lt", "key": "n", "value": 3})
    assert lt({"n": 2}) and not lt({"n": "2"}) and not lt({})
    for bad, match in (
        ({"type": "like", "key": "k", "value": 1}, "type"),
        ({"type": "eq", "value": 1}, "key"),
        ({"type": "in", "key": "k", "value": 1}, "list"),
        ({"type": "or", "filters": []}, "non-empty"),
    ):
        with pytest.raises(InvalidRequest, match=match):
            compile_filter(bad)
