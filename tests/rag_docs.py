"""Documents the RAG tests and ``bench/rag.py`` generate: a tiny but real PDF writer (one text page per
paragraph group, Helvetica, the structure pypdf reads) and a labelled corpus of made-up facts."""

from __future__ import annotations

import random
from dataclasses import dataclass


def make_pdf(lines: list[str]) -> bytes:
    """A valid one-page PDF showing ``lines`` (ASCII) with the standard Helvetica font."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 11 Tf", "14 TL", "50 760 Td"]
    for line in lines:
        ops += [f"({esc(line)}) Tj", "T*"]
    ops.append("ET")
    stream = "\n".join(ops).encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


_PLACES = ["harbour", "observatory", "library", "orchard", "foundry", "lighthouse", "market", "quarry"]
_THINGS = ["bell", "lantern", "compass", "clock", "banner", "statue", "fountain", "telescope"]
_COLOURS = ["crimson", "teal", "amber", "violet", "silver", "ochre", "jade", "cobalt"]
_SYLLABLES = ["ka", "lo", "mi", "ru", "ten", "vo", "za", "shi", "pe", "dor", "nal", "qui"]


@dataclass(frozen=True)
class Fact:
    town: str
    place: str
    thing: str
    colour: str
    year: int

    def sentence(self) -> str:
        return (
            f"In the town of {self.town}, the {self.thing} of the old {self.place} was painted "
            f"{self.colour} in the year {self.year}."
        )

    def question(self) -> str:
        return f"What colour is the {self.thing} of the {self.place} in {self.town}?"


def facts(n: int, seed: int = 7) -> list[Fact]:
    """``n`` facts about distinct invented towns (the question names the town: one right chunk)."""
    rng = random.Random(seed)
    towns: set[str] = set()
    while len(towns) < n:
        towns.add("".join(rng.choice(_SYLLABLES) for _ in range(3)).capitalize())
    return [
        Fact(t, rng.choice(_PLACES), rng.choice(_THINGS), rng.choice(_COLOURS), rng.randint(1500, 1999))
        for t in sorted(towns)
    ]
