"""Token ids as bytes, and the JSON guide over tokens: which tokens keep the output valid. No torch.

:class:`Vocabulary` reads a tokenizer once: the exact UTF-8 bytes each token adds to the text. Byte-level
BPE (GPT-2, SmolLM, Llama 3, Qwen) maps every token back to its bytes, so tokens that hold part of a
multi-byte character are exact too; ``<0xNN>`` byte-fallback tokens are one byte; for other tokenizers a
token is its own decoded text, and a token whose text alone is not whole UTF-8 is never allowed (the
conservative choice). Special and added tokens never appear inside a guided value.

:class:`TokenGuide` walks one generation: ``allows(token)`` tries a token's bytes on the automaton
(cheap: the engine asks about its best candidates first); ``allowed()`` is the whole set, found by
walking the sorted vocabulary as a trie so that a refused prefix prunes every token that starts with it.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from collections.abc import Collection, Iterable, Sequence
from functools import cache
from typing import Any

from superollama.runtimes._json_guide import Frame, feed_bytes, start
from superollama.runtimes._json_schema import Node

__all__ = ["TokenGuide", "Vocabulary", "byte_level_table"]

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@cache
def byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte, reversed."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


class Vocabulary:
    """``pieces[id]``: the bytes token ``id`` adds to the text; ``guided``: the ids a guided value may
    use (no special or added token, no empty one, no broken text). ``eos``: the ids that end a text."""

    def __init__(self, pieces: Sequence[bytes], guided: Collection[int], eos: Iterable[int]) -> None:
        self.pieces = list(pieces)
        self.eos = frozenset(eos)
        usable = sorted((self.pieces[i], i) for i in guided if self.pieces[i])
        self._sorted = [p for p, _ in usable]
        self._ids = [i for _, i in usable]
        self._guided = frozenset(self._ids)

    def guided(self, token: int) -> bool:
        return token in self._guided

    def piece(self, token: int) -> bytes:
        """The bytes of ``token`` (a special token's own text; b"" for an id past the tokenizer's)."""
        return self.pieces[token] if 0 <= token < len(self.pieces) else b""

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, eos: Iterable[int]) -> Vocabulary:
        size = len(tokenizer)
        names = tokenizer.convert_ids_to_tokens(list(range(size)))
        added = {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
        added |= {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
        byte_level = _uses_byte_level(tokenizer)
        table = byte_level_table()
        pieces: list[bytes] = []
        guided: list[int] = []
        for i, token_name in enumerate(names):
            name = token_name or ""
            if i in added:
                pieces.append(tokenizer.decode([i], skip_special_tokens=False).encode())
                continue
            piece = _piece(tokenizer, i, name, table if byte_level else None)
            if piece is None:
                pieces.append(tokenizer.decode([i]).encode())
            else:
                pieces.append(piece)
                guided.append(i)
        return cls(pieces, guided, eos)

    def allowed(self, frame: Frame) -> list[int]:
        """Every guided token whose bytes the automaton accepts from ``frame``."""
        out: list[int] = []
        self._walk(0, len(self._sorted), 0, frame, out)
        return out

    def _walk(self, lo: int, hi: int, depth: int, frame: Frame, out: list[int]) -> None:
        toks = self._sorted
        i = lo
        while i < hi and len(toks[i]) == depth:  # the prefix itself is a token
            out.append(self._ids[i])
            i += 1
        while i < hi:
            byte = toks[i][depth]
            head = toks[i][:depth]
            end = hi if byte == 0xFF else bisect_left(toks, head + bytes((byte + 1,)), i, hi)
            after = frame.feed(byte)
            if after is not None:
                self._walk(i, end, depth + 1, after, out)
            i = end


def _uses_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (ValueError, AttributeError):
        return False
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return any(isinstance(p, dict) and p.get("type") == "ByteLevel" for p in parts)


def _piece(tokenizer: Any, token: int, name: str, table: dict[str, int] | None) -> bytes | None:
    """The bytes of an ordinary token, or None when they cannot be known exactly."""
    if table is not None and name and all(c in table for c in name):
        return bytes(table[c] for c in name)
    match = _BYTE_TOKEN.fullmatch(name)
    if match:
        return bytes((int(match.group(1), 16),))
    text = name.replace("\u2581", " ") if name.startswith("\u2581") else tokenizer.decode([token])
    if not text or "\ufffd" in text:
        return None
    return str(text).encode()


class TokenGuide:
    """One generation under a JSON constraint: the automaton's state after the tokens taken so far."""

    def __init__(self, vocab: Vocabulary, node: Node) -> None:
        self.vocab = vocab
        self.frame: Frame = start(node)

    @property
    def done(self) -> bool:
        """The value is whole and nothing may follow: stop here."""
        return self.frame.closed

    @property
    def accepting(self) -> bool:
        """The text may end here (an end-of-sequence token is allowed)."""
        return self.frame.complete

    def _next(self, token: int) -> Frame | None:
        if not self.vocab.guided(token):
            return None
        return feed_bytes(self.frame, self.vocab.pieces[token])

    def allows(self, token: int) -> bool:
        if token in self.vocab.eos:
            return self.accepting
        return self._next(token) is not None

    def allowed(self) -> list[int]:
        """Every token allowed now (an end-of-sequence one too when the text may end)."""
        ids = self.vocab.allowed(self.frame)
        return [*ids, *sorted(self.vocab.eos)] if self.accepting else ids

    def advance(self, token: int) -> None:
        """Take ``token`` (one that ``allows`` accepted)."""
        if token in self.vocab.eos:
            return
        after = self._next(token)
        if after is None:
            raise ValueError(f"token {token} does not continue the JSON text")
        self.frame = after
