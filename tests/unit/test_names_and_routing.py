"""Model reference grammar and routing-table lookups."""

from __future__ import annotations

import pytest

from superollama.control import Route, RoutingHolder, RoutingTable
from superollama.core import ModelRef, NameError_


@pytest.mark.parametrize(
    ("text", "canonical", "parts"),
    [
        ("smollm2", "smollm2:latest", ("smollm2", "latest")),
        ("SmolLM2:135M", "smollm2:135m", ("smollm2", "135m")),
        ("library/llama3:8b", "library/llama3:8b", ("library", "llama3", "8b")),
        ("hf.co/org/repo:Q4_K_M", "hf.co/org/repo:q4_k_m", ("hf.co", "org", "repo", "q4_k_m")),
        ("localhost:5000/ns/m:t", "localhost:5000/ns/m:t", ("localhost:5000", "ns", "m", "t")),
    ],
)
def test_parse(text: str, canonical: str, parts: tuple[str, ...]) -> None:
    ref = ModelRef.parse(text)
    assert str(ref) == canonical
    assert ref.path_parts == parts
    assert ModelRef.parse(str(ref)) == ref


@pytest.mark.parametrize(
    "text", ["", " ", "-x", "a/b/c/d", "m:", "m:-x", "m:a b", "a b", "../etc:x", "m:" + "t" * 200]
)
def test_rejects(text: str) -> None:
    with pytest.raises(NameError_):
        ModelRef.parse(text)


def test_lookup_normalises_the_name() -> None:
    table = RoutingTable.build(
        [Route("smollm2:latest", "smollm2:latest", True, 1), Route("x:1", "x:1", False, 2)], generation=1
    )
    assert table.lookup("SmolLM2") is table.routes["smollm2:latest"]
    assert table.lookup("x:1") is not None and not table.lookup("x:1").enabled  # type: ignore[union-attr]
    assert table.lookup("x:2") is None
    assert table.lookup("not a name!") is None
    assert [r.name for r in table.enabled()] == ["smollm2:latest"]


def test_holder_swaps_whole_snapshots() -> None:
    holder = RoutingHolder()
    first = holder.table
    new = RoutingTable.build([Route("a:1", "a:1", True, 1)], generation=7)
    holder.publish(new)
    assert holder.table is new and first.routes == {} and new.generation == 7
