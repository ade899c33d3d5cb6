"""The scalar frames of the JSON automaton (``_json_guide``): exact literals, numbers and strings, over
UTF-8 bytes. Pure, no torch. Each frame is immutable: ``feed(byte)`` returns the next frame or None.

Numbers have at most ``MAX_DIGITS`` digits before and after the point and 3 in the exponent (so small
models cannot loop on digits); integers are written without a fraction or exponent. Strings are checked
as UTF-8 (no control characters, valid escapes, no encoded surrogates) and counted in characters for
``minLength``/``maxLength``.
"""

from __future__ import annotations

import abc
import json

from superollama.runtimes._json_schema import StringNode

__all__ = ["MAX_DIGITS", "Frame", "Literal", "Number", "String"]

MAX_DIGITS = 18
_MAX_EXPONENT = 3
_QUOTE, _BACKSLASH = 0x22, 0x5C
_DIGITS = frozenset(range(0x30, 0x3A))
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = frozenset(b'"\\/bfnrt')


class Frame(abc.ABC):
    """A state of the automaton (immutable); every kind of state says how it takes the next byte."""

    __slots__ = ()

    @abc.abstractmethod
    def feed(self, byte: int) -> Frame | None:
        """The state after ``byte``, or None when the byte cannot come here."""

    @property
    def complete(self) -> bool:
        """The value read so far is a whole value (it may still go on: a number)."""
        return False

    @property
    def closed(self) -> bool:
        """The value is whole and nothing can extend it."""
        return False


class Literal(Frame):
    """One of several exact byte strings; ``pos`` bytes of them read."""

    __slots__ = ("options", "pos")

    def __init__(self, options: tuple[bytes, ...], pos: int) -> None:
        self.options = options
        self.pos = pos

    def feed(self, byte: int) -> Frame | None:
        pos = self.pos
        kept = tuple(o for o in self.options if len(o) > pos and o[pos] == byte)
        return Literal(kept, pos + 1) if kept else None

    @property
    def complete(self) -> bool:
        return any(len(o) == self.pos for o in self.options)

    @property
    def closed(self) -> bool:
        return all(len(o) == self.pos for o in self.options)

    @property
    def text(self) -> bytes:
        return next(o for o in self.options if len(o) == self.pos)


class Number(Frame):
    """``-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?``; integers stop before ``.``/``e``."""

    __slots__ = ("digits", "integer", "state")
    START, MINUS, ZERO, INT, POINT, FRAC, E, E_SIGN, EXP = range(9)
    _COMPLETE = frozenset({ZERO, INT, FRAC, EXP})

    def __init__(self, integer: bool, state: int, digits: int) -> None:
        self.integer = integer
        self.state = state
        self.digits = digits

    def _go(self, state: int, digits: int = 0) -> Number:
        return Number(self.integer, state, digits)

    def feed(self, byte: int) -> Frame | None:
        s, digit = self.state, byte in _DIGITS
        if s in (self.START, self.MINUS):
            if byte == 0x30:
                return self._go(self.ZERO)
            if digit:
                return self._go(self.INT, 1)
            return self._go(self.MINUS) if s == self.START and byte == 0x2D else None
        if s == self.INT and digit:
            return self._go(self.INT, self.digits + 1) if self.digits < MAX_DIGITS else None
        if s in (self.ZERO, self.INT, self.FRAC) and not self.integer and byte in (0x65, 0x45):
            return self._go(self.E)
        if s in (self.ZERO, self.INT) and not self.integer and byte == 0x2E:
            return self._go(self.POINT)
        if s in (self.POINT, self.FRAC) and digit:
            return self._go(self.FRAC, self.digits + 1) if self.digits < MAX_DIGITS else None
        if s == self.E and byte in (0x2B, 0x2D):
            return self._go(self.E_SIGN)
        if s in (self.E, self.E_SIGN, self.EXP) and digit:
            return self._go(self.EXP, self.digits + 1) if self.digits < _MAX_EXPONENT else None
        return None

    @property
    def complete(self) -> bool:
        return self.state in self._COMPLETE


class String(Frame):
    """Inside a string after its opening quote. ``mode``: 0 plain, 1 after a backslash, 2-5 hex digits
    of ``\\uXXXX`` still to come, 6 closed; ``cont``/``lo``/``hi``: UTF-8 continuation bytes still due
    and the range of the next one. ``raw`` keeps the bytes when the text matters (an object's key)."""

    __slots__ = ("chars", "cont", "lo_hi", "mode", "node", "raw")

    def __init__(
        self, node: StringNode, mode: int, chars: int, cont: int, lo_hi: int, *, raw: bytes | None
    ) -> None:
        self.node = node
        self.mode = mode
        self.chars = chars
        self.cont = cont
        self.lo_hi = lo_hi
        self.raw = raw

    def _go(self, mode: int, chars: int, cont: int = 0, lo_hi: int = 0, byte: int = -1) -> String:
        raw = self.raw if self.raw is None or byte < 0 else self.raw + bytes((byte,))
        return String(self.node, mode, chars, cont, lo_hi, raw=raw)

    def feed(self, byte: int) -> Frame | None:
        mode, chars = self.mode, self.chars
        if self.cont:
            lo, hi = self.lo_hi >> 8, self.lo_hi & 0xFF
            if not lo <= byte <= hi:
                return None
            return self._go(0, chars, self.cont - 1, 0x80BF, byte)
        if mode == 0:
            room = self.node.max_length is None or chars < self.node.max_length
            if byte == _QUOTE:
                return self._go(6, chars, byte=byte) if chars >= self.node.min_length else None
            if not room or byte < 0x20:
                return None
            if byte == _BACKSLASH:
                return self._go(1, chars, byte=byte)
            if byte < 0x80:
                return self._go(0, chars + 1, byte=byte)
            lead = _utf8_lead(byte)
            return None if lead is None else self._go(0, chars + 1, lead[0], lead[1], byte)
        if mode == 1:
            if byte == 0x75:  # \u
                return self._go(2, chars, byte=byte)
            return self._go(0, chars + 1, byte=byte) if byte in _ESCAPES else None
        if 2 <= mode <= 5 and byte in _HEX:
            return self._go(0, chars + 1, byte=byte) if mode == 5 else self._go(mode + 1, chars, byte=byte)
        return None

    @property
    def complete(self) -> bool:
        return self.mode == 6

    @property
    def closed(self) -> bool:
        return self.mode == 6

    @property
    def text(self) -> str:
        return str(json.loads(b'"' + (self.raw or b"")))


def _utf8_lead(byte: int) -> tuple[int, int] | None:
    """(continuation bytes, range of the first one as lo << 8 | hi) for a UTF-8 lead byte."""
    if 0xC2 <= byte <= 0xDF:
        return 1, 0x80BF
    if byte == 0xE0:
        return 2, 0xA0BF
    if byte == 0xED:
        return 2, 0x809F  # no surrogates
    if 0xE1 <= byte <= 0xEF:
        return 2, 0x80BF
    if byte == 0xF0:
        return 3, 0x90BF
    if 0xF1 <= byte <= 0xF3:
        return 3, 0x80BF
    if byte == 0xF4:
        return 3, 0x808F
    return None
