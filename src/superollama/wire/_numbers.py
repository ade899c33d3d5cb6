"""Range checks for the numeric fields of a request, shared by the OpenAI and Ollama edges.

The gateway relays bodies to backends that hold these numbers in fixed-width C integers: llama.cpp reads
``max_tokens``/``n_predict``/``top_k`` into an ``int32`` and a larger value wraps round silently
(``4294967297`` becomes ``1``), or turns negative and comes back as a backend error that quotes a number
the client never sent. So every numeric field is checked here, at the edge, against the range the backends
accept, and refused with the field's name. JSON ``true`` is not the integer 1 (Python's ``bool`` is an
``int``: it is excluded on purpose), and ``1.5`` is not an integer.

Pure: ``problem`` says what is wrong with one value (or None); each edge words it in its own protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["INT32_MAX", "INT64_MAX", "INT64_MIN", "Bound", "Problem", "kind_of", "problem"]

INT32_MAX = 2**31 - 1  # llama.cpp's int32 fields (n_predict, top_k, n_probs …)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # a seed: OpenAI's documented range, Ollama's Go int


@dataclass(frozen=True, slots=True)
class Bound:
    """What one field accepts: an integer or any number, within ``[low, high]`` (None: unbounded)."""

    integer: bool
    low: int | float | None = None
    high: int | float | None = None

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            return f"{kind} from {self.low} to {self.high}"
        if self.low is not None:
            return f"{kind} >= {self.low}"
        if self.high is not None:
            return f"{kind} <= {self.high}"
        return kind


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a value was refused: ``code`` is OpenAI's (``invalid_type``, ``integer_above_max_value`` …)."""

    code: str
    expected: str  # "an integer", "a value <= 2147483647"
    got: str  # "a boolean", "4294967297"


def kind_of(value: Any) -> str:
    """The JSON type of a decoded value, as an error message names it."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


def problem(value: Any, bound: Bound) -> Problem | None:
    """None when ``value`` fits ``bound``; else what is wrong with it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return Problem("invalid_type", "an integer" if bound.integer else "a number", kind_of(value))
    if bound.integer and not isinstance(value, int):
        return Problem("invalid_type", "an integer", kind_of(value))
    unit = "integer" if isinstance(value, int) else "decimal"
    if bound.low is not None and value < bound.low:
        return Problem(f"{unit}_below_min_value", f"a value >= {bound.low}", repr(value))
    if bound.high is not None and value > bound.high:
        return Problem(f"{unit}_above_max_value", f"a value <= {bound.high}", repr(value))
    return None
