"""How much generated text is safe to stream while a ``stop`` string may still be forming. Pure."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StopText"]


class StopText:
    """Tracks the text generated so far against ``stop`` strings and yields only what is safe to send.

    ``update(text)`` takes the whole text generated so far and returns ``(delta, stopped)``: the new text
    that can go out now (holding back a tail that may still become a stop string, or an incomplete
    UTF-8 character), and whether a stop string was found (the text is cut before it).
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.sent = ""

    def update(self, text: str) -> tuple[str, bool]:
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            return self._advance(text[:cut]), True
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:k]):
                    hold = k
                    break
        end = len(text) - hold
        while end > 0 and text[end - 1] == "\ufffd":  # a multi-byte character still arriving
            end -= 1
        return self._advance(text[:end]), False

    def finish(self, text: str) -> str:
        """The rest of ``text`` at the end of generation (no stop string was met)."""
        return self._advance(text)

    def _advance(self, upto: str) -> str:
        if len(upto) <= len(self.sent) or not upto.startswith(self.sent):
            return ""
        delta = upto[len(self.sent) :]
        self.sent = upto
        return delta
