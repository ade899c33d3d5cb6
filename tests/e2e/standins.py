"""Local stand-ins of backends we connect to but do not run: an Ollama server and a Hugging Face
text-generation-inference (TGI) server, each an aiohttp app on loopback in a thread of its own.

No real Ollama binary (or TGI container) can be installed on this machine, so these stand-ins serve the
documented wire formats instead (ollama/api/types.go, docs/api.md and docs/openai.md of Ollama; TGI's
OpenAPI: ``/info``, ``/health``, the Messages API). They generate no text: a chat answers
``You said: <last user message>`` word by word, an embedding is a unit vector derived from the text's
sha256, so a test can predict every byte. The official ``ollama`` Python client validates the Ollama
stand-in's answers (tests/e2e/test_connections_ollama.py), which is what keeps it faithful.

``go_down`` closes the listening socket and every open connection (what a killed server looks like:
connection refused); ``come_back`` listens again on the same port.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import re
import struct
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Self

from aiohttp import web

__all__ = ["OllamaStandIn", "TgiStandIn", "ThreadedServer", "reply_for", "vector_for"]

_WORDS = re.compile(r"\S+\s*")


def _compact(obj: Any) -> bytes:
    """JSON as Go's encoder and serde write it: no spaces."""
    return json.dumps(obj, separators=(",", ":")).encode()


def reply_for(text: str) -> str:
    """What every stand-in answers to a last user message ``text``."""
    return f"You said: {text}"


def vector_for(text: str, dims: int) -> list[float]:
    """The stand-ins' embedding of ``text``: deterministic, unit length (Ollama normalizes ``/api/embed``)."""
    digest = b""
    counter = 0
    while len(digest) < dims:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    raw = [(b - 127.5) / 127.5 for b in digest[:dims]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


class ThreadedServer:
    """An aiohttp application on 127.0.0.1 (a free port) in its own thread and event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, JSON body or None), in order
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        raise NotImplementedError

    def bodies(self, method: str, path: str) -> list[Any]:
        return [body for m, p, body in self.requests if m == method and p == path]

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw
        self.requests.append((request.method, request.path, body))
        response: web.StreamResponse = await handler(request)
        return response

    async def _start(self) -> None:
        app = self.app()
        app.middlewares.insert(0, self._record)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        self.port = self._runner.addresses[0][1]

    async def _go_down(self) -> None:
        assert self._runner is not None and self._runner.server is not None
        if self._site is not None:
            await self._site.stop()
            self._site = None
        for conn in list(self._runner.server.connections):
            conn.force_close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self) -> Self:
        self._thread.start()
        self._call(self._start())
        return self

    def go_down(self) -> None:
        """Stop listening and drop every open connection: clients get 'connection refused'."""
        self._call(self._go_down())

    def come_back(self) -> None:
        self._call(self._listen())

    def stop(self) -> None:
        if self._runner is not None:
            self._call(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# -- Ollama -----------------------------------------------------------------------------------------------


def _rfc3339(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).isoformat().replace("+00:00", "Z")


def _canonical(name: str) -> str:
    """Ollama's short names: ``llama3.2`` is ``llama3.2:latest``."""
    name = name.strip()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def _text_of(content: Any) -> tuple[str, list[str]]:
    """The text and images (base64) of a message: Ollama's string, or OpenAI's list of parts."""
    if isinstance(content, str) or content is None:
        return content or "", []
    texts, images = [], []
    for part in content:
        if part.get("type") == "text":
            texts.append(part.get("text", ""))
        elif part.get("type") == "image_url":
            url = part["image_url"]["url"] if isinstance(part["image_url"], dict) else part["image_url"]
            images.append(url.split(",", 1)[1] if url.startswith("data:") else url)
    return "".join(texts), images


class OllamaStandIn(ThreadedServer):
    """An Ollama server's API as documented: native ``/api/*`` (NDJSON streaming by default) and the
    OpenAI-compatible ``/v1/*``; ``/api/show`` describes a model (Modelfile, parameters, template, details,
    model_info, capabilities), ``/api/pull`` can fetch any model of ``PULLABLE`` (progress as NDJSON),
    ``/api/copy`` and ``/api/delete`` edit the model list. ``images`` records every image it was sent.
    SSE events are compact JSON (``data: {"id":…}``), as Go's encoder writes them."""

    VERSION = "0.6.5"
    PULLABLE = ("qwen2.5", "llama3.2", "smollm2", "nomic-embed-text", "all-minilm")
    EMBED_DIMS = 16
    TEMPLATE = "{{ if .System }}<|system|>{{ .System }}{{ end }}<|user|>{{ .Prompt }}<|assistant|>"

    def __init__(self) -> None:
        super().__init__()
        self.models: dict[str, dict[str, Any]] = {}
        self.images: list[str] = []
        for name, family, params, embed_only in (
            ("llama3.2:1b", "llama", "1.2B", False),
            ("nomic-embed-text:latest", "nomic-bert", "137M", True),
        ):
            self._add(name, family, params, embed_only)

    def _add(self, name: str, family: str, params: str, embed_only: bool) -> None:
        self.models[name] = {
            "name": name,
            "model": name,
            "modified_at": _rfc3339(),
            "size": 1_321_098_329 if not embed_only else 274_302_450,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": family,
                "families": [family],
                "parameter_size": params,
                "quantization_level": "Q8_0" if not embed_only else "F16",
            },
            "_embed_only": embed_only,
        }

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/", self._root)
        r.add_get("/api/version", self._version)
        r.add_get("/api/tags", self._tags)
        r.add_post("/api/chat", self._api_chat)
        r.add_post("/api/generate", self._api_generate)
        r.add_post("/api/embed", self._api_embed)
        r.add_post("/api/embeddings", self._api_embeddings)
        r.add_post("/api/show", self._api_show)
        r.add_post("/api/pull", self._api_pull)
        r.add_post("/api/copy", self._api_copy)
        r.add_delete("/api/delete", self._api_delete)
        r.add_get("/v1/models", self._v1_models)
        r.add_post("/v1/chat/completions", self._v1_chat)
        r.add_post("/v1/embeddings", self._v1_embeddings)
        return app

    # -- helpers ------------------------------------------------------------------------------------------
    def _find(self, name: Any) -> dict[str, Any] | None:
        return self.models.get(_canonical(name)) if isinstance(name, str) and name.strip() else None

    @staticmethod
    def _api_error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    @staticmethod
    def _v1_error(status: int, message: str) -> web.Response:
        kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        return web.json_response(body, status=status)

    def _answer(self, messages: list[dict[str, Any]]) -> tuple[str, int]:
        """The reply to a conversation and its prompt token count (one token per word)."""
        last, prompt_tokens = "", 0
        for message in messages:
            text, images = _text_of(message.get("content"))
            images = images + list(message.get("images") or [])
            self.images.extend(images)
            prompt_tokens += len(text.split()) + len(images)
            if message.get("role") == "user":
                last = text + (f" [{len(images)} image(s)]" if images else "")
        return reply_for(last), prompt_tokens

    @staticmethod
    def _pieces(reply: str, limit: Any) -> tuple[list[str], str]:
        words = _WORDS.findall(reply)
        if isinstance(limit, int) and 0 <= limit < len(words):
            return words[:limit], "length"
        return words, "stop"

    @staticmethod
    def _stats(prompt_tokens: int, eval_count: int) -> dict[str, Any]:
        return {
            "total_duration": 12_000_000 + eval_count * 1_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": 2_000_000,
            "eval_count": eval_count,
            "eval_duration": eval_count * 1_000_000,
        }

    async def _ndjson(self, request: web.Request, lines: Iterator[dict[str, Any]]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for line in lines:
            await response.write(json.dumps(line).encode() + b"\n")
            await asyncio.sleep(0)  # not a wait: one chunk per loop turn, like a server streaming tokens
        await response.write_eof()
        return response

    # -- native API ---------------------------------------------------------------------------------------
    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self.VERSION})

    async def _tags(self, request: web.Request) -> web.Response:
        models = [{k: v for k, v in m.items() if not k.startswith("_")} for m in self.models.values()]
        return web.json_response({"models": models})

    async def _api_chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = self._find(body.get("model"))
        if model is None:
            return self._api_error(404, f'model "{body.get("model")}" not found, try pulling it first')
        if model["_embed_only"]:
            return self._api_error(400, f'"{model["name"]}" does not support chat')
        reply, prompt_tokens = self._answer(body.get("messages") or [])
        pieces, reason = self._pieces(reply, (body.get("options") or {}).get("num_predict"))
        name = body["model"]

        def final(content: str) -> dict[str, Any]:
            return {
                "model": name,
                "created_at": _rfc3339(),
                "message": {"role": "assistant", "content": content},
                "done_reason": reason,
                "done": True,
                **self._stats(prompt_tokens, len(pieces)),
            }

        if body.get("stream", True) is False:
            return web.json_response(final("".join(pieces)))

        def lines() -> Iterator[dict[str, Any]]:
            for piece in pieces:
                message = {"role": "assistant", "content": piece}
                yield {"model": name, "created_at": _rfc3339(), "message": message, "done": False}
            yield final("")

        return await self._ndjson(request, lines())

    async def _api_generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = self._find(body.get("model"))
        if model is None:
            return self._api_error(404, f'model "{body.get("model")}" not found, try pulling it first')
        prompt = str(body.get("prompt") or "")
        messages = [{"role": "user", "content": prompt, "images": body.get("images") or []}]
        reply, prompt_tokens = self._answer(messages)
        pieces, reason = self._pieces(reply, (body.get("options") or {}).get("num_predict"))
        name = body["model"]
        context = [len(w) for w in _WORDS.findall(prompt + "".join(pieces))]

        def final(response: str) -> dict[str, Any]:
            return {
                "model": name,
                "created_at": _rfc3339(),
                "response": response,
                "done": True,
                "done_reason": reason,
                "context": context,
                **self._stats(prompt_tokens, len(pieces)),
            }

        if body.get("stream", True) is False:
            return web.json_response(final("".join(pieces)))

        def lines() -> Iterator[dict[str, Any]]:
            for piece in pieces:
                yield {"model": name, "created_at": _rfc3339(), "response": piece, "done": False}
            yield final("")

        return await self._ndjson(request, lines())

    async def _api_embed(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self._find(body.get("model")) is None:
            return self._api_error(404, f'model "{body.get("model")}" not found, try pulling it first')
        inputs = body.get("input", [])
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        return web.json_response(
            {
                "model": body["model"],
                "embeddings": [vector_for(t, self.EMBED_DIMS) for t in inputs],
                "total_duration": 4_000_000,
                "load_duration": 1_000_000,
                "prompt_eval_count": sum(len(t.split()) for t in inputs),
            }
        )

    async def _api_embeddings(self, request: web.Request) -> web.Response:
        """The legacy endpoint: one ``prompt`` → one ``embedding``, no counts."""
        body = await request.json()
        if self._find(body.get("model")) is None:
            return self._api_error(404, f'model "{body.get("model")}" not found, try pulling it first')
        return web.json_response({"embedding": vector_for(str(body.get("prompt") or ""), self.EMBED_DIMS)})

    async def _api_show(self, request: web.Request) -> web.Response:
        """Ollama's ShowHandler: ``model`` (or the older ``name``) required, 404 for an unknown model."""
        body = await request.json()
        raw = body.get("model") or body.get("name")
        if not isinstance(raw, str) or not raw.strip():
            return self._api_error(400, "model is required")
        model = self._find(raw)
        if model is None:
            return self._api_error(404, f"model '{raw}' not found")
        details, name = model["details"], model["name"]
        family = details["family"]
        embed_only = model["_embed_only"]
        parameters = {} if embed_only else {"stop": '"<|user|>"', "temperature": "0.7"}
        modelfile = (
            '# Modelfile generated by "ollama show"\n'
            "# To build a new Modelfile based on this, replace FROM with:\n"
            f"# FROM {name}\n\n"
            f"FROM /root/.ollama/models/blobs/sha256-{model['digest']}\n"
            + ("" if embed_only else f'TEMPLATE """{self.TEMPLATE}"""\n')
            + "".join(f"PARAMETER {k} {v}\n" for k, v in parameters.items())
        )
        return web.json_response(
            {
                "modelfile": modelfile,
                "parameters": "\n".join(f"{k:<30} {v}" for k, v in parameters.items()),
                "template": "" if embed_only else self.TEMPLATE,
                "details": details,
                "model_info": {
                    "general.architecture": family,
                    "general.file_type": 7,
                    "general.parameter_count": model["size"] // 2,
                    f"{family}.context_length": 2048 if embed_only else 131072,
                    f"{family}.embedding_length": self.EMBED_DIMS if embed_only else 2048,
                },
                "capabilities": ["embedding"] if embed_only else ["completion", "tools"],
                "modified_at": model["modified_at"],
            }
        )

    async def _api_pull(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        raw = body.get("model") or body.get("name")
        if not isinstance(raw, str) or not raw.strip():
            return self._api_error(400, "model is required")
        name = _canonical(raw)
        base = name.rsplit(":", 1)[0]
        known = base in self.PULLABLE
        layers = [hashlib.sha256(f"{name}/{i}".encode()).hexdigest() for i in range(2)]
        sizes = [400_000_000, 1_200]

        def progress() -> Iterator[dict[str, Any]]:
            yield {"status": "pulling manifest"}
            if not known:
                yield {"error": "pull model manifest: file does not exist"}
                return
            for digest, total in zip(layers, sizes, strict=True):
                for completed in (0, total // 2, total):
                    yield {
                        "status": f"pulling {digest[:12]}",
                        "digest": f"sha256:{digest}",
                        "total": total,
                        "completed": completed,
                    }
            yield {"status": "verifying sha256 digest"}
            yield {"status": "writing manifest"}
            self._add(name, "nomic-bert" if "embed" in base else "qwen2", "494M", "embed" in base)
            yield {"status": "success"}

        if body.get("stream", True) is False:
            last = list(progress())[-1]
            return web.json_response(last, status=500 if "error" in last else 200)
        return await self._ndjson(request, progress())

    async def _api_copy(self, request: web.Request) -> web.Response:
        body = await request.json()
        source, destination = body.get("source"), body.get("destination")
        model = self._find(source)
        if model is None:
            return self._api_error(404, f'model "{source}" not found')
        if not isinstance(destination, str) or not destination.strip():
            return self._api_error(400, "destination is required")
        name = _canonical(destination)
        self.models[name] = {**model, "name": name, "model": name, "modified_at": _rfc3339()}
        return web.Response(status=200)

    async def _api_delete(self, request: web.Request) -> web.Response:
        body = await request.json()
        raw = body.get("model") or body.get("name")
        if self._find(raw) is None:
            return self._api_error(404, f"model '{raw}' not found")
        del self.models[_canonical(raw)]
        return web.Response(status=200)

    # -- OpenAI-compatible API ----------------------------------------------------------------------------
    async def _v1_models(self, request: web.Request) -> web.Response:
        data = [
            {"id": name, "object": "model", "created": int(time.time()), "owned_by": "library"}
            for name in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _v1_chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = self._find(body.get("model"))
        if model is None:
            return self._v1_error(404, f'model "{body.get("model")}" not found, try pulling it first')
        if model["_embed_only"]:
            return self._v1_error(400, f'"{model["name"]}" does not support chat')
        reply, prompt_tokens = self._answer(body.get("messages") or [])
        pieces, reason = self._pieces(reply, body.get("max_tokens", body.get("max_completion_tokens")))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        }
        head = {
            "id": "chatcmpl-42",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fp_ollama",
        }
        if not body.get("stream"):
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(pieces)},
                "finish_reason": reason,
            }
            return web.json_response(
                {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {**head, "object": "chat.completion.chunk"}
        for i, piece in enumerate(pieces):
            delta = {"role": "assistant", "content": piece}
            done = reason if i == len(pieces) - 1 else None
            event = {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": done}]}
            await response.write(b"data: " + _compact(event) + b"\n\n")
            await asyncio.sleep(0)  # not a wait: one chunk per loop turn, like a server streaming tokens
        if (body.get("stream_options") or {}).get("include_usage"):
            event = {**chunk, "choices": [], "usage": usage}
            await response.write(b"data: " + _compact(event) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _v1_embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self._find(body.get("model")) is None:
            return self._v1_error(404, f'model "{body.get("model")}" not found, try pulling it first')
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
            return self._v1_error(400, "invalid input type")
        vectors = [vector_for(t, self.EMBED_DIMS) for t in inputs]
        if body.get("encoding_format") == "base64":
            data: list[Any] = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors]
        else:
            data = vectors
        tokens = sum(len(t.split()) for t in inputs)
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "embedding": e, "index": i} for i, e in enumerate(data)],
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


# -- text-generation-inference ----------------------------------------------------------------------------


class TgiStandIn(ThreadedServer):
    """TGI's router as documented: ``GET /info`` (one ``model_id`` per server), ``GET /health`` (200, or
    503 while the model shards are down, which ``/info`` does not show), and the OpenAI-style Messages API
    ``POST /v1/chat/completions`` (JSON, or SSE written ``data:{…}`` with no space, as TGI's axum does).

    ``unhealthy = True`` is the state TGI is in when its shard died: the router still answers ``/info``,
    ``/health`` is 503 and generation fails with 424."""

    MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
    VERSION = "3.0.1"

    def __init__(self) -> None:
        super().__init__()
        self.unhealthy = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/info", self._info)
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "model_id": self.MODEL_ID,
                "model_sha": "12fd25f77366fa6b3b4b768ec3050bf629380bac",
                "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": 128,
                "max_best_of": 2,
                "max_stop_sequences": 4,
                "max_input_tokens": 8191,
                "max_total_tokens": 8192,
                "validation_workers": 2,
                "max_client_batch_size": 4,
                "router": "text-generation-router",
                "version": self.VERSION,
                "sha": "bb9095aac3d4c5ac8f6e3e8b4ef1ec3e2e2b5e49",
                "docker_label": f"sha-{self.VERSION}",
            }
        )

    def _down(self) -> web.Response:
        body = {"error": "unhealthy", "error_type": "healthcheck"}
        return web.json_response(body, status=503)

    async def _health(self, request: web.Request) -> web.Response:
        return self._down() if self.unhealthy else web.Response(status=200)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if self.unhealthy:
            body = {
                "error": "Request failed during generation: Server error: transport error",
                "error_type": "generation",
            }
            return web.json_response(body, status=424)
        body = await request.json()
        last = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        text, _ = _text_of(last)
        words = _WORDS.findall(reply_for(text))
        limit = body.get("max_tokens")
        reason = "stop"
        if isinstance(limit, int) and limit < len(words):
            words, reason = words[:limit], "length"
        prompt_tokens = sum(len(_text_of(m["content"])[0].split()) for m in body["messages"])
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        head = {
            "id": "",
            "created": int(time.time()),
            "model": self.MODEL_ID,
            "system_fingerprint": f"{self.VERSION}-sha-bb9095a",
        }
        if not body.get("stream"):
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(words)},
                "logprobs": None,
                "finish_reason": reason,
            }
            return web.json_response(
                {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, word in enumerate(words):
            done = reason if i == len(words) - 1 else None
            choice = {
                "index": 0,
                "delta": {"role": "assistant", "content": word},
                "logprobs": None,
                "finish_reason": done,
            }
            event = {**head, "object": "chat.completion.chunk", "choices": [choice], "usage": None}
            await response.write(b"data:" + _compact(event) + b"\n\n")
            await asyncio.sleep(0)  # not a wait: one chunk per loop turn, like a server streaming tokens
        if (body.get("stream_options") or {}).get("include_usage"):
            event = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            await response.write(b"data:" + _compact(event) + b"\n\n")
        await response.write(b"data:[DONE]\n\n")
        await response.write_eof()
        return response


class StandIn:
    """A minimal OpenAI-compatible server on loopback (/v1/models, /v1/chat/completions) in a thread."""

    def __init__(self) -> None:
        self.down = False
        self.failing = False  # chats answer 500 (a broken backend that still answers its health check)
        self.chats = 0
        self.auth: list[str | None] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _models(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization"))
        if self.down:
            return web.Response(status=503, text="maintenance")
        return web.json_response({"object": "list", "data": [{"id": "echo-1", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization"))
        self.chats += 1
        if self.failing:
            return web.json_response(
                {"error": {"message": "internal error", "type": "server_error"}}, status=500
            )
        body = await request.json()
        text = body["messages"][-1]["content"]
        return web.json_response(
            {
                "id": "c1",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text[::-1]},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def start(self) -> StandIn:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        """Stop serving (a killed server: connections refused); a second call does nothing."""
        if not self._thread.is_alive():
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
