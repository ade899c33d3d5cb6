"""An incremental JSON automaton over UTF-8 bytes, aware of a schema (``_json_schema``): pure, no torch.

``start(node)`` gives the state before the first byte; ``state.feed(byte)`` the state after it, or None
when no JSON text that satisfies the schema starts with what was fed. States are immutable, so a
caller tries a token's bytes on the current state and keeps it or not. It is a pushdown automaton
written as nested frames (an object frame holds the frame of the value being read); alternatives
(``anyOf``, a list of types, unconstrained values) run side by side in a union frame until the bytes
tell them apart.

``done``: the value is complete and nothing can follow it (generation stops there). ``accepting``: the
value could end here (a number at the top level may also go on).

Bounds that keep small models from looping on layout: whitespace between tokens is at most one space,
or one newline followed by up to ``MAX_INDENT`` spaces or tabs; numbers are bounded too, and strings
checked as UTF-8, in the scalar frames (``_json_scalars``). Keys of an object are never repeated, and
the object closes only once its ``required`` keys are written.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from superollama.runtimes._json_scalars import MAX_DIGITS, Frame, Literal, Number, String
from superollama.runtimes._json_schema import (
    ArrayNode,
    Node,
    NumberNode,
    ObjectNode,
    RefNode,
    StringNode,
    UnionNode,
)

__all__ = ["MAX_DIGITS", "MAX_INDENT", "Frame", "feed_bytes", "start"]

MAX_INDENT = 32
_SPACE, _TAB, _NEWLINE, _QUOTE = 0x20, 0x09, 0x0A, 0x22


def _ws(run: int, byte: int) -> int:
    """The next whitespace-run state after ``byte`` (a whitespace byte), or -1 when over the bound.

    Run states: 0 none yet, 1 one space, 2 + k a newline then k spaces or tabs."""
    if byte == _NEWLINE:
        return 2 if run < 2 else -1
    if run == 0:
        return 1
    if run >= 2 and run - 2 < MAX_INDENT:
        return run + 1
    return -1


def _is_ws(byte: int) -> bool:
    return byte in (_SPACE, _TAB, _NEWLINE)


def begin(node: Node, byte: int) -> Frame | None:
    """The frame of a value of ``node`` after its first byte, or None."""
    if isinstance(node, RefNode):
        return begin(node.target, byte)
    if isinstance(node, UnionNode):
        return _union(begin(alt, byte) for alt in node.alternatives)
    if isinstance(node, ObjectNode):
        return _Object(node, _Object.OPEN, frozenset(), None, None) if byte == 0x7B else None
    if isinstance(node, ArrayNode):
        return _Array(node, _Array.OPEN, 0, None, 0) if byte == 0x5B else None
    if isinstance(node, StringNode):
        return String(node, 0, 0, 0, 0, raw=None) if byte == _QUOTE else None
    if isinstance(node, NumberNode):
        return Number(node.integer, Number.START, 0).feed(byte)
    return Literal(node.options, 0).feed(byte)


def _union(frames: Iterable[Frame | None]) -> Frame | None:
    alive = tuple(f for f in frames if f is not None)
    if not alive:
        return None
    return alive[0] if len(alive) == 1 else _Union(alive)


class _Union(Frame):
    __slots__ = ("frames",)

    def __init__(self, frames: tuple[Frame, ...]) -> None:
        self.frames = frames

    def feed(self, byte: int) -> Frame | None:
        return _union(f.feed(byte) for f in self.frames)

    @property
    def complete(self) -> bool:
        return any(f.complete for f in self.frames)

    @property
    def closed(self) -> bool:
        return all(f.closed for f in self.frames)


class _Array(Frame):
    __slots__ = ("child", "count", "node", "state", "ws")
    OPEN, VALUE, AFTER, COMMA, CLOSED = range(5)

    def __init__(self, node: ArrayNode, state: int, count: int, child: Frame | None, ws: int) -> None:
        self.node = node
        self.state = state
        self.count = count
        self.child = child
        self.ws = ws

    def feed(self, byte: int) -> Frame | None:
        node, state = self.node, self.state
        if state == self.VALUE:
            assert self.child is not None
            child = self.child.feed(byte)
            if child is not None:
                if child.closed:
                    return _Array(node, self.AFTER, self.count + 1, None, 0)
                return _Array(node, self.VALUE, self.count, child, 0)
            if not self.child.complete:
                return None
            return _Array(node, self.AFTER, self.count + 1, None, 0).feed(byte)
        if state == self.CLOSED:
            return None
        if _is_ws(byte):
            run = _ws(self.ws, byte)
            return None if run < 0 else _Array(node, state, self.count, None, run)
        full = node.max_items is not None and self.count >= node.max_items
        if byte == 0x5D and state in (self.OPEN, self.AFTER) and self.count >= node.min_items:
            return _Array(node, self.CLOSED, self.count, None, 0)
        if state == self.AFTER:
            return _Array(node, self.COMMA, self.count, None, 0) if byte == 0x2C and not full else None
        if full:
            return None
        child = begin(node.items, byte)
        if child is None:
            return None
        if child.closed:
            return _Array(node, self.AFTER, self.count + 1, None, 0)
        return _Array(node, self.VALUE, self.count, child, 0)

    @property
    def complete(self) -> bool:
        return self.state == self.CLOSED

    @property
    def closed(self) -> bool:
        return self.state == self.CLOSED


class _Object(Frame):
    """``{`` read. ``key`` is the property being read or whose value is read; ``seen`` the keys done."""

    __slots__ = ("child", "key", "node", "seen", "state", "ws")
    OPEN, KEY, COLON, VALUE, IN_VALUE, AFTER, COMMA, CLOSED = range(8)

    def __init__(
        self,
        node: ObjectNode,
        state: int,
        seen: frozenset[str],
        key: str | None,
        child: Frame | None,
        *,
        ws: int = 0,
    ) -> None:
        self.node = node
        self.state = state
        self.seen = seen
        self.key = key
        self.child = child
        self.ws = ws

    def _go(self, state: int, seen: frozenset[str], key: str | None, child: Frame | None) -> _Object:
        return _Object(self.node, state, seen, key, child)

    def feed(self, byte: int) -> Frame | None:
        state, seen = self.state, self.seen
        if state == self.KEY:
            assert self.child is not None
            key = self.child.feed(byte)
            if key is None:
                return None
            if not key.closed:
                return self._go(self.KEY, seen, None, key)
            name = _key_name(key)
            if name in seen or (name not in self.node.properties and self.node.additional is None):
                return None
            return self._go(self.COLON, seen | {name}, name, None)
        if state == self.IN_VALUE:
            assert self.child is not None
            child = self.child.feed(byte)
            if child is not None:
                after = child.closed
                return self._go(self.AFTER if after else self.IN_VALUE, seen, None, None if after else child)
            if not self.child.complete:
                return None
            return self._go(self.AFTER, seen, None, None).feed(byte)
        if state == self.CLOSED:
            return None
        if _is_ws(byte):
            run = _ws(self.ws, byte)
            return None if run < 0 else _Object(self.node, state, seen, self.key, None, ws=run)
        if state in (self.OPEN, self.AFTER) and byte == 0x7D:
            return self._go(self.CLOSED, seen, None, None) if self.node.required <= seen else None
        if state in (self.OPEN, self.COMMA) and byte == _QUOTE:
            return self._begin_key()
        if state == self.COLON:
            return self._go(self.VALUE, seen, self.key, None) if byte == 0x3A else None
        if state == self.AFTER:
            return self._go(self.COMMA, seen, None, None) if byte == 0x2C and self._room() else None
        if state == self.VALUE:
            assert self.key is not None
            child = begin(self._value_node(self.key), byte)
            if child is None:
                return None
            if child.closed:
                return self._go(self.AFTER, seen, None, None)
            return self._go(self.IN_VALUE, seen, None, child)
        return None

    def _room(self) -> bool:
        """Another key can follow: an open object, or a declared property not yet written."""
        return self.node.additional is not None or any(p not in self.seen for p in self.node.properties)

    def _begin_key(self) -> Frame | None:
        node = self.node
        if node.additional is None:
            options = tuple(_key_literal(p) for p in node.properties if p not in self.seen)
            if not options:
                return None
            key: Frame = Literal(options, 1)
        else:
            key = String(StringNode(), 0, 0, 0, 0, raw=b"")
        return self._go(self.KEY, self.seen, None, key)

    def _value_node(self, key: str) -> Node:
        found = self.node.properties.get(key)
        if found is not None:
            return found
        assert self.node.additional is not None
        return self.node.additional

    @property
    def complete(self) -> bool:
        return self.state == self.CLOSED

    @property
    def closed(self) -> bool:
        return self.state == self.CLOSED


def _key_literal(name: str) -> bytes:
    return json.dumps(name, ensure_ascii=False).encode()


def _key_name(frame: Frame) -> str:
    if isinstance(frame, Literal):
        return str(json.loads(frame.text))
    assert isinstance(frame, String)
    return frame.text


class _Root(Frame):
    """The whole text: optional leading whitespace (one run), then one value, then nothing."""

    __slots__ = ("child", "node", "ws")

    def __init__(self, node: Node, child: Frame | None, ws: int) -> None:
        self.node = node
        self.child = child
        self.ws = ws

    def feed(self, byte: int) -> Frame | None:
        if self.child is None:
            if _is_ws(byte):
                run = _ws(self.ws, byte)
                return None if run < 0 else _Root(self.node, None, run)
            child = begin(self.node, byte)
        else:
            child = self.child.feed(byte)
        return None if child is None else _Root(self.node, child, 0)

    @property
    def complete(self) -> bool:
        return self.child is not None and self.child.complete

    @property
    def closed(self) -> bool:
        return self.child is not None and self.child.closed


def start(node: Node) -> Frame:
    """The state before any byte of a JSON text that satisfies ``node``."""
    return _Root(node, None, 0)


def feed_bytes(frame: Frame | None, data: bytes) -> Frame | None:
    """``frame`` after every byte of ``data``, or None as soon as one is refused."""
    for byte in data:
        if frame is None:
            return None
        frame = frame.feed(byte)
    return frame
