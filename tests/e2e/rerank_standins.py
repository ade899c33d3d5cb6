"""Local stand-ins of the rerank servers we connect to but cannot run here (no GPU containers, no weights).

- ``TeiStandIn``: Hugging Face text-embeddings-inference's router with a reranker loaded, as its OpenAPI
  and ``router/src/http/{server,types}.rs`` document it: ``GET /info`` (``model_type: {"reranker": …}``),
  ``GET /health``, ``POST /rerank`` (``{query, texts, truncate, raw_scores, return_text}`` →
  ``[{index, score, text?}]`` best first, with the ``x-compute-*`` headers), errors ``{error, error_type}``
  with TEI's statuses (validation 413, backend 424: "model is not a re-ranker model"). TGI proper
  (text-generation-inference) has no ``/rerank`` route (its router answers 404): a ``tgi`` connection
  reranks when the server behind it is TEI, which the same connection kind discovers (``/info``'s
  ``model_id``, ``/health``).
- ``VllmRerankStandIn``: vLLM's OpenAI-compatible server with a cross-encoder (``--task score``): ``GET
  /v1/models``, ``POST /rerank``, ``/v1/rerank``, ``/v2/rerank`` (``{model, query, documents, top_n}`` →
  ``{id, model, usage, results: [{index, document: {text}, relevance_score}]}``; ``top_n`` 0 is all),
  errors in vLLM's ``{object: "error", message, type, param, code}``.

Neither computes a real relevance: a document's score is the share of the query's words it contains
(``overlap``), so a test can predict every number.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from aiohttp import web
from tests.e2e.standins import ThreadedServer

__all__ = ["TeiStandIn", "VllmRerankStandIn", "overlap", "pair_tokens"]

_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def overlap(query: str, document: str) -> float:
    """The stand-ins' relevance: the share of the query's distinct words found in the document."""
    asked = set(_words(query))
    return len(asked & set(_words(document))) / len(asked) if asked else 0.0


def pair_tokens(query: str, document: str) -> int:
    """The stand-ins' token count of one pair."""
    return len(_words(query)) + len(_words(document)) + 3  # [CLS] query [SEP] document [SEP]


class TeiStandIn(ThreadedServer):
    MODEL_ID = "BAAI/bge-reranker-base"
    VERSION = "1.7.0"
    MAX_CLIENT_BATCH_SIZE = 32

    def __init__(self, *, reranker: bool = True) -> None:
        super().__init__()
        self.reranker = reranker  # False: an embedding model is loaded (rerank answers 424)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/info", self._info)
        app.router.add_get("/health", self._health)
        app.router.add_post("/rerank", self._rerank)
        return app

    async def _info(self, request: web.Request) -> web.Response:
        labels = {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
        model_type = {"reranker": labels} if self.reranker else {"embedding": {"pooling": "cls"}}
        return web.json_response(
            {
                "model_id": self.MODEL_ID,
                "model_sha": "2cfc18c9415c912f9d8155881c133215df768a70",
                "model_dtype": "float16",
                "model_type": model_type,
                "max_concurrent_requests": 512,
                "max_input_length": 512,
                "max_batch_tokens": 16384,
                "max_batch_requests": None,
                "max_client_batch_size": self.MAX_CLIENT_BATCH_SIZE,
                "auto_truncate": False,
                "tokenization_workers": 2,
                "version": self.VERSION,
                "sha": "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678",
                "docker_label": f"sha-{self.VERSION}",
            }
        )

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    @staticmethod
    def _error(status: int, message: str, error_type: str) -> web.Response:
        return web.json_response({"error": message, "error_type": error_type}, status=status)

    async def _rerank(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            body = await request.json()
            query, texts = body["query"], body["texts"]
            assert isinstance(query, str) and isinstance(texts, list)
        except (ValueError, KeyError, AssertionError):  # axum's Json extractor: a plain-text 422
            return web.Response(status=422, text="Failed to deserialize the JSON body into the target type")
        if not texts:
            return self._error(413, "`texts` cannot be empty", "validation")
        if not self.reranker:
            return self._error(424, "model is not a re-ranker model", "backend")
        if len(texts) > self.MAX_CLIENT_BATCH_SIZE:
            message = f"batch size {len(texts)} > maximum allowed batch size {self.MAX_CLIENT_BATCH_SIZE}"
            return self._error(413, message, "validation")
        ranks = []
        for index, text in enumerate(texts):
            rank: dict[str, Any] = {"index": index, "score": overlap(query, text)}
            if body.get("return_text"):
                rank["text"] = text
            ranks.append(rank)
        ranks.sort(key=lambda r: r["score"], reverse=True)
        tokens = sum(pair_tokens(query, t) for t in texts)
        took = str(int((time.perf_counter() - started) * 1000))
        headers = {
            "x-compute-type": "cpu",
            "x-compute-characters": str(sum(len(query) + len(t) for t in texts)),
            "x-compute-tokens": str(tokens),
            "x-compute-time": took,
            "x-total-time": took,
            "x-tokenization-time": "0",
            "x-queue-time": "0",
            "x-inference-time": took,
        }
        return web.json_response(ranks, headers=headers)


class VllmRerankStandIn(ThreadedServer):
    MODEL_ID = "BAAI/bge-reranker-v2-m3"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
            app.router.add_post(path, self._rerank)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        model = {
            "id": self.MODEL_ID,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": self.MODEL_ID,
            "parent": None,
            "max_model_len": 8192,
        }
        return web.json_response({"object": "list", "data": [model]})

    @staticmethod
    def _error(status: int, message: str, kind: str) -> web.Response:
        body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
        return web.json_response(body, status=status)

    async def _rerank(self, request: web.Request) -> web.Response:
        body = await request.json()
        model = body.get("model") or self.MODEL_ID
        if model != self.MODEL_ID:
            return self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
        query, documents = body.get("query"), body.get("documents")
        if not isinstance(query, str) or not isinstance(documents, list):
            return self._error(400, "query and documents are required", "BadRequestError")
        scored = sorted(
            ((i, overlap(query, d)) for i, d in enumerate(documents)), key=lambda s: s[1], reverse=True
        )
        top_n = body.get("top_n") or len(documents)
        tokens = sum(pair_tokens(query, d) for d in documents)
        results = [
            {"index": i, "document": {"text": documents[i]}, "relevance_score": score}
            for i, score in scored[:top_n]
        ]
        return web.json_response(
            {
                "id": f"rerank-{uuid.uuid4().hex}",
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "results": results,
            }
        )
