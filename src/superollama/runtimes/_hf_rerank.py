"""The rerank side of the transformers worker: a cross-encoder (``*ForSequenceClassification`` with one
label) scores (query, document) pairs.

Like ``_hf_engine``, only the worker process imports this, and it runs on the worker's one model thread.
Pairs go through the model in batches (``batch_size``), padded to the longest pair of the batch and cut
to the model's context (the longer side first, as sentence-transformers' ``CrossEncoder`` does); a
score is the sigmoid of the one logit (what sentence-transformers, TEI and vLLM return for a one-label
cross-encoder), so it lies in (0, 1).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["RerankEngine", "is_cross_encoder"]

_CLASSIFIER_SUFFIX = "ForSequenceClassification"


def is_cross_encoder(config: dict[str, Any]) -> bool:
    """A sequence classifier with one label: the shape of every cross-encoder reranker."""
    architectures = config.get("architectures") or []
    if not any(str(a).endswith(_CLASSIFIER_SUFFIX) for a in architectures):
        return False
    labels = config.get("id2label")
    count = config.get("num_labels", len(labels) if isinstance(labels, dict) else 2)
    return bool(count == 1)


def read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


class RerankEngine:
    """A cross-encoder and its tokenizer."""

    task = "rerank"

    def __init__(self, model: Any, tokenizer: Any, torch: Any, device: Any, batch_size: int = 32) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.torch = torch
        self.device = device
        self.batch_size = batch_size
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 512)
        model_max = getattr(tokenizer, "model_max_length", limit)
        self.context = min(limit, model_max) if isinstance(model_max, int) and model_max > 0 else limit

    @classmethod
    def load(cls, folder: Path, device: Any, dtype: Any, torch: Any) -> RerankEngine:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), dtype=dtype, local_files_only=True
        )
        if int(model.config.num_labels) != 1:
            raise ValueError(f"a reranker has one label; this classifier has {model.config.num_labels}")
        return cls(model.to(device).eval(), tokenizer, torch, device)

    def _cut(self, document: str, max_tokens: int | None) -> str:
        if max_tokens is None:
            return document
        tokens = self.tokenizer.tokenize(document)
        if len(tokens) <= max_tokens:
            return document
        return str(self.tokenizer.convert_tokens_to_string(tokens[:max_tokens]))

    def score(
        self, query: str, documents: Sequence[str], max_tokens_per_doc: int | None = None
    ) -> tuple[list[float], int]:
        """The relevance of each document to ``query`` (in order) and the number of tokens read."""
        torch = self.torch
        scores: list[float] = []
        tokens = 0
        with torch.inference_mode():
            for start in range(0, len(documents), self.batch_size):
                batch = [self._cut(d, max_tokens_per_doc) for d in documents[start : start + self.batch_size]]
                features = self.tokenizer(
                    [query] * len(batch),
                    batch,
                    padding=True,
                    truncation="longest_first",
                    max_length=self.context,
                    return_tensors="pt",
                ).to(self.device)
                tokens += int(features["attention_mask"].sum().item())
                logits = self.model(**features).logits.float()
                scores.extend(torch.sigmoid(logits[:, 0]).tolist())
        return scores, tokens
