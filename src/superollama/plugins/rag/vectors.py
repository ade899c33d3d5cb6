"""The ``VectorStore`` seam: where a vector store's chunks and their embeddings live, and how the nearest
ones are found. Two implementations pass the same contract suite
(``tests/contract/test_vector_store_contract.py``):

- ``sqlite-vec`` (``SqliteVecStore``, the embedded default): one SQLite file beside the registry, a
  ``vec0`` table partitioned by collection. The standard ``sqlite3`` module of many Pythons (this one's
  included) cannot load extensions, so it runs on ``apsw``, which always can.
- ``lancedb`` (``LanceStore``, ``pip install 'superollama[lancedb]'``): a folder of Lance tables, one per
  collection, for larger collections (``bench/rag.py`` measures both).

A *collection* is one OpenAI vector store (``vs_…``). Methods block (SQLite, Arrow): the service calls
them in a thread. Scores are cosine similarities (1 = same direction). Attribute filters (OpenAI's
comparison and compound filters) are evaluated here, on the candidates the engine returns, widening the
search until enough pass or the collection is exhausted, so both engines answer the same hits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from superollama.errors import InvalidRequest

__all__ = [
    "Chunk",
    "Filter",
    "Hit",
    "VectorStore",
    "compile_filter",
    "filtered_search",
]

Attributes = Mapping[str, str | int | float | bool]
Filter = Callable[[Attributes], bool]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a file, with its embedding (``vector``, any dimension, the same in a collection)."""

    file_id: str
    index: int  # its position in the file
    text: str
    vector: Sequence[float]
    filename: str = ""
    attributes: Attributes = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hit:
    file_id: str
    index: int
    text: str
    filename: str
    attributes: Attributes
    score: float


class VectorStore(Protocol):
    kind: ClassVar[str]

    def add(self, collection: str, chunks: Sequence[Chunk]) -> None:
        """Store chunks (a collection's first chunk fixes its dimension; another one is refused)."""

    def nearest(self, collection: str, vector: Sequence[float], k: int) -> list[Hit]:
        """The ``k`` chunks nearest to ``vector``, best first (fewer when the collection is smaller)."""

    def delete_file(self, collection: str, file_id: str) -> int:
        """Remove a file's chunks; how many were removed."""

    def drop(self, collection: str) -> None:
        """Remove a collection and every chunk in it (nothing to do if it does not exist)."""

    def count(self, collection: str) -> int: ...

    def close(self) -> None: ...


def filtered_search(
    store: VectorStore,
    collection: str,
    vector: Sequence[float],
    k: int,
    *,
    where: Filter | None = None,
    threshold: float | None = None,
) -> list[Hit]:
    """The best ``k`` hits that pass ``where`` and score at least ``threshold``: asks the store for more
    candidates (4 times as many each round) until ``k`` pass, a candidate scores under the threshold, or
    none remain."""
    want = k if where is None else k * 4
    total = store.count(collection)
    while True:
        hits = store.nearest(collection, vector, min(want, max(total, 1)))
        kept = [h for h in hits if threshold is None or h.score >= threshold]
        below = len(kept) < len(hits)
        if where is not None:
            kept = [h for h in kept if where(h.attributes)]
        if len(kept) >= k or below or len(hits) < want or want >= total:
            return kept[:k]
        want *= 4


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "in": lambda a, b: a in b,
    "nin": lambda a, b: a not in b,
}


def compile_filter(spec: Any, param: str = "filters") -> Filter:
    """OpenAI's filters (``{type: eq|ne|gt|gte|lt|lte|in|nin, key, value}`` or ``{type: and|or,
    filters: [...]}``) as a predicate on a chunk's attributes; a 400 naming what is wrong otherwise.
    A comparison on a missing key, or between a number and a string, is false (``ne``/``nin``: true)."""
    if not isinstance(spec, Mapping):
        raise InvalidRequest(f"{param} must be an object", param=param)
    kind = spec.get("type")
    if kind in ("and", "or"):
        parts = spec.get("filters")
        if not isinstance(parts, list) or not parts:
            raise InvalidRequest(f"{param}.filters must be a non-empty list", param=param)
        preds = [compile_filter(p, f"{param}.filters[{i}]") for i, p in enumerate(parts)]
        if kind == "and":
            return lambda attrs: all(p(attrs) for p in preds)
        return lambda attrs: any(p(attrs) for p in preds)
    if kind not in _COMPARE:
        raise InvalidRequest(
            f"{param}.type must be one of eq, ne, gt, gte, lt, lte, in, nin, and, or (got {kind!r})",
            param=param,
        )
    key, value = spec.get("key"), spec.get("value")
    if not isinstance(key, str) or not key:
        raise InvalidRequest(f"{param}.key must be a non-empty string", param=param)
    if kind in ("in", "nin"):
        if not isinstance(value, list):
            raise InvalidRequest(f"{param}.value must be a list for {kind!r}", param=param)
    elif not isinstance(value, str | int | float | bool):
        raise InvalidRequest(f"{param}.value must be a string, number or boolean", param=param)
    compare = _COMPARE[kind]
    negative = kind in ("ne", "nin")

    def test(attrs: Attributes) -> bool:
        if key not in attrs:
            return negative
        try:
            return bool(compare(attrs[key], value))
        except TypeError:  # a number against a string
            return negative

    return test
