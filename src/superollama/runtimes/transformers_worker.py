"""Child process of one transformers instance: loads a Hugging Face folder and serves OpenAI routes.

    python -m superollama.runtimes.transformers_worker --instance-id ID --model DIR --alias NAME \
        [--device cpu|cuda:N] [--dtype auto|float32|bfloat16|float16] [--task chat|embedding|rerank|auto] \
        [--threads N] [--max-queue N] [--parent-pid PID] [--guardian-pid PID]

Routes (aiohttp on 127.0.0.1, a free port): ``/v1/chat/completions`` and ``/v1/completions`` (chat and
text models, SSE streaming, logprobs; chats also take ``tools`` and ``response_format`` JSON modes, kept
by constrained decoding; an image-text model's chats take ``image_url`` parts as base64 data URLs),
``/v1/embeddings`` (sentence-transformers models), ``/v1/rerank``
(cross-encoders; vLLM's request and answer shape), ``/v1/models``,
``/health``. One request runs on the model at a time (the others wait their turn, up to ``--max-queue``,
then 503); a client that goes away stops its generation at the next token.

Only this process imports torch, transformers and sentence-transformers (through ``_hf_engine``). The
original stdout carries the one handshake line (``_ready``); logs go to stderr (the instance's log file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import orjson
from aiohttp import web

from superollama.runtimes import _openai_shapes as shapes
from superollama.runtimes import _replies as replies
from superollama.runtimes._child import settle_lifetime, take_control_pipe
from superollama.runtimes._logprobs import Piece
from superollama.runtimes._openai_shapes import RequestError
from superollama.runtimes._ready import format_failed, format_ready
from superollama.runtimes._rerank_shapes import parse_rerank, rerank_response

if TYPE_CHECKING:
    from superollama.runtimes._hf_engine import Outcome

__all__ = ["main"]

log = logging.getLogger("superollama.worker")
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m superollama.runtimes.transformers_worker")
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--model", required=True, type=Path, help="Hugging Face model folder")
    parser.add_argument("--alias", required=True, help="model name the server answers to")
    parser.add_argument("--adapter", type=Path, default=None, help="LoRA (peft) folder over --model")
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--task", default="auto", choices=["auto", "chat", "embedding", "rerank"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch decides)")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting their turn, then 503")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit at once if not our parent")
    parser.add_argument("--guardian-pid", type=int, default=None, help="outlive the parent, die with it")
    return parser.parse_args(argv)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _ignore(_: Piece) -> None:
    return None


def _internal(exc: BaseException) -> RequestError:
    log.error("request failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return RequestError(f"{type(exc).__name__}: {exc}", status=500, type="internal_error")


def _finished(out: Outcome) -> Outcome:
    """``out`` if the generation ended by itself; a 503 if the instance stopped it (shutting down)."""
    if out.finish_reason == "cancelled":
        raise RequestError(
            "the instance is stopping: generation was interrupted",
            status=503,
            type="service_unavailable",
            code="instance_stopping",
        )
    return out


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestError as exc:
        return _json(shapes.error_body(exc), exc.status)
    except web.HTTPException:
        raise
    except Exception as exc:
        return _json(shapes.error_body(_internal(exc)), 500)


class Worker:
    """The HTTP side: parse, queue one request at a time on the generation thread, shape the answer."""

    def __init__(self, engine: Any, alias: str, max_queue: int) -> None:
        self.engine = engine
        self.alias = alias
        self.max_queue = max_queue
        self.created = int(time.time())
        self._lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="generate")
        self._waiting = 0
        self._cancels: set[threading.Event] = set()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_errors], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/rerank", self.rerank)
        return app

    def stop_all(self) -> None:
        """Cancel every generation (shutdown), then let the thread go."""
        for cancel in list(self._cancels):
            cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "task": self.engine.task, "queued": self._waiting})

    async def models(self, request: web.Request) -> web.Response:
        model = {"id": self.alias, "object": "model", "created": self.created, "owned_by": "superollama"}
        return _json({"object": "list", "data": [model]})

    async def _body(self, request: web.Request) -> Any:
        try:
            return orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise RequestError(f"the request body is not valid JSON: {exc}") from exc

    def _engine(self, task: str) -> Any:
        if self.engine.task != task:
            raise RequestError(
                f"model {self.alias!r} serves {self.engine.task}, not {task}",
                param="model",
                code="wrong_task",
            )
        return self.engine

    def _admit(self) -> None:
        if self._waiting >= self.max_queue:
            raise RequestError(
                f"server busy: {self._waiting} requests already wait for this model",
                status=503,
                type="service_unavailable",
                code="server_busy",
            )

    async def _run(self, job: Callable[[threading.Event], T]) -> T:
        """Run ``job(cancel)`` on the generation thread once it is our turn. Whatever ends this coroutine
        (a disconnect cancels it) sets ``cancel``; the turn passes on only when the thread is done."""
        self._admit()
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        self._cancels.add(cancel)

        def release(_: object = None) -> None:
            self._cancels.discard(cancel)
            self._lock.release()

        try:
            future = self._executor.submit(job, cancel)
        except BaseException:
            release()
            raise
        future.add_done_callback(lambda _: _call_soon(loop, release))
        try:
            return await asyncio.wrap_future(future)
        finally:
            cancel.set()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        engine = self._engine("chat")
        params = shapes.parse_chat(await self._body(request))
        extra: dict[str, Any] = {}
        if params.images:
            if not getattr(engine, "reads_images", False):
                raise RequestError(
                    f"model {self.alias!r} is text-only: it cannot read images",
                    param="messages",
                    code="image_input_not_supported",
                )
            prompt, extra["inputs"] = engine.image_prompt(params.messages, params.tools, params.images)
        else:
            prompt = engine.chat_prompt(params.messages, params.tools)
        engine.check_room(prompt, params.sampling)
        reply = shapes.Reply(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), self.alias)
        if not params.stream:
            out = _finished(
                await self._run(lambda c: engine.generate(prompt, params.sampling, c, _ignore, **extra))
            )
            use = shapes.usage(out.prompt_tokens, out.completion_tokens)
            return _json(replies.chat_response(reply, params, out, use))
        return await self._stream(
            request,
            lambda c, emit: engine.generate(prompt, params.sampling, c, emit, **extra),
            replies.ChatStream(reply, params),
        )

    async def completions(self, request: web.Request) -> web.StreamResponse:
        engine = self._engine("chat")
        params = shapes.parse_completion(await self._body(request))
        prompt = engine.text_prompt(params.prompt)
        engine.check_room(prompt, params.sampling)
        reply = shapes.Reply(f"cmpl-{uuid.uuid4().hex}", int(time.time()), self.alias)
        if not params.stream:
            out = _finished(await self._run(lambda c: engine.generate(prompt, params.sampling, c, _ignore)))
            use = shapes.usage(out.prompt_tokens, out.completion_tokens)
            return _json(replies.completion_response(reply, params, out, use))
        return await self._stream(
            request,
            lambda c, emit: engine.generate(prompt, params.sampling, c, emit),
            replies.CompletionStream(reply, params),
        )

    async def _stream(
        self,
        request: web.Request,
        job: Callable[[threading.Event, Callable[[Piece], None]], Any],
        shaper: replies.StreamShaper,
    ) -> web.StreamResponse:
        self._admit()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Piece | None] = asyncio.Queue()

        def emit(piece: Piece) -> None:
            _call_soon(loop, queue.put_nowait, piece)

        task = asyncio.ensure_future(self._run(lambda cancel: job(cancel, emit)))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        response = web.StreamResponse(headers=_SSE_HEADERS)
        try:
            await response.prepare(request)
            for chunk in shaper.first():
                await response.write(_sse(chunk))
            while (piece := await queue.get()) is not None:
                for chunk in shaper.piece(piece):
                    await response.write(_sse(chunk))
            try:
                out = _finished(task.result())
            except Exception as exc:  # failed or stopped mid-stream: say so in the stream, then end it
                err = exc if isinstance(exc, RequestError) else _internal(exc)
                await response.write(_sse(shapes.error_body(err)))
                return response
            for chunk in shaper.end(
                out.finish_reason, shapes.usage(out.prompt_tokens, out.completion_tokens)
            ):
                await response.write(_sse(chunk))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def embeddings(self, request: web.Request) -> web.Response:
        engine = self._engine("embedding")
        params = shapes.parse_embeddings(await self._body(request))
        if params.dimensions is not None and params.dimensions != engine.dimensions:
            raise RequestError(
                f"this model's embeddings have {engine.dimensions} dimensions", param="dimensions"
            )
        vectors, tokens = await self._run(lambda _: engine.embed(params.inputs))
        body = shapes.embeddings_response(self.alias, vectors, as_base64=params.base64, prompt_tokens=tokens)
        return _json(body)

    async def rerank(self, request: web.Request) -> web.Response:
        engine = self._engine("rerank")
        params = parse_rerank(await self._body(request))
        scores, tokens = await self._run(
            lambda _: engine.score(params.query, params.documents, params.max_tokens_per_doc)
        )
        return _json(rerank_response(f"rerank-{uuid.uuid4().hex}", self.alias, params, scores, tokens))


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
        loop.call_soon_threadsafe(fn, *args)


async def serve(worker: Worker, args: argparse.Namespace, control: IO[str]) -> None:
    """Listen on a free port, print the handshake, serve until SIGTERM/SIGINT, then shut down."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(worker.app(), handler_cancellation=True, shutdown_timeout=2.0)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, 0))
    await web.SockSite(runner, sock).start()
    address = f"http://{args.host}:{sock.getsockname()[1]}"
    log.info("instance %s: serving %s (%s) at %s", args.instance_id, args.alias, worker.engine.task, address)
    control.write(format_ready(address, os.getpid()))
    control.close()
    await stop.wait()
    log.info("instance %s: stopping", args.instance_id)
    worker.stop_all()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not settle_lifetime(args.parent_pid, args.guardian_pid):
        print("parent is gone before start: exiting", file=sys.stderr)
        return 3
    control = take_control_pipe()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a model folder is local: never reach for a hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from superollama.runtimes._hf_engine import LoadError, load_engine

    try:
        engine = load_engine(
            args.model.resolve(),
            device=args.device,
            dtype=args.dtype,
            task=args.task,
            threads=args.threads,
            adapter=args.adapter,
        )
    except LoadError as exc:
        control.write(format_failed(str(exc)))
        control.close()
        return 1
    worker = Worker(engine, args.alias, args.max_queue)
    _run_loop(serve(worker, args, control))
    # Served and shut down cleanly. Skip the interpreter's teardown of torch and transformers (seconds
    # of freeing module state): nothing is left to flush but the log.
    logging.shutdown()
    sys.stderr.flush()
    os._exit(0)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


if __name__ == "__main__":
    sys.exit(main())
