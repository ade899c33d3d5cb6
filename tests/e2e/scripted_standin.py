"""A local stand-in of an OpenAI-compatible server whose answers a test can predict, tool calls included:
the documented chat completions wire format (JSON and SSE with ``stream_options.include_usage``).

SmolLM2 is too small to call tools on purpose, so the tool paths of the translated APIs are exercised
against this connection. Its rules:

- the request has ``tools`` and the last message is not a ``tool`` reply → one call of the first tool,
  ``{"city": <last user text>}`` as arguments, ``finish_reason: tool_calls``;
- the last message is a ``tool`` reply → ``Result: <its content>``;
- otherwise → ``reply_for(<last user text>)``.

Streams send text word by word and a call's arguments in three fragments, then a usage chunk when asked,
then ``[DONE]``. Usage counts words (prompt: every message's words), so a test can predict it too.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from tests.e2e.conftest import ServerProcess
from tests.e2e.standins import ThreadedServer, reply_for

__all__ = ["MODEL", "Gateway", "ScriptedStandIn"]

MODEL = "scripted"


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(p["text"]) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content or "")


def _last_user(messages: list[dict[str, Any]]) -> str:
    return next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")


class ScriptedStandIn(ThreadedServer):
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    def _answer(self, body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        messages = body["messages"]
        last = messages[-1]
        if last.get("role") == "tool":
            return f"Result: {_text(last.get('content'))}", None
        if body.get("tools"):
            name = body["tools"][0]["function"]["name"]
            call = {"id": f"call_{len(self.requests)}", "name": name}
            return "", call | {"arguments": json.dumps({"city": _last_user(messages)})}
        return reply_for(_last_user(messages)), None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        text, call = self._answer(body)
        prompt = sum(len(_text(m.get("content")).split()) for m in body["messages"])
        usage = {"prompt_tokens": prompt, "completion_tokens": max(1, len(text.split())), "total_tokens": 0}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        finish = "tool_calls" if call else "stop"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if call:
                arguments = call["arguments"]
                message["tool_calls"] = [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": arguments},
                    }
                ]
            choice = {"index": 0, "message": message, "finish_reason": finish}
            return web.json_response(
                {
                    "id": "c1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": MODEL,
                    "choices": [choice],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            chunk = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": MODEL,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        await send({"role": "assistant", "content": ""})
        words = text.split(" ") if text else []
        for i, word in enumerate(words):
            await send({"content": word + (" " if i < len(words) - 1 else "")})
        if call:
            args = call["arguments"]
            cut = [0, len(args) // 3, 2 * len(args) // 3, len(args)]
            head = {
                "index": 0,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": ""},
            }
            await send({"tool_calls": [head]})
            for a, b in itertools.pairwise(cut):
                await send({"tool_calls": [{"index": 0, "function": {"arguments": args[a:b]}}]})
        await send({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            tail = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": MODEL,
                "choices": [],
                "usage": usage,
            }
            await response.write(b"data: " + json.dumps(tail).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


class Gateway:
    """A running ``serve`` (bundled SmolLM2 on llama.cpp) with this stand-in connected as ``lab`` and an
    admin key (keys are on): what the translated-API tests share."""

    def __init__(self, server: ServerProcess, key: str, standin: ScriptedStandIn) -> None:
        self.server, self.key, self.standin = server, key, standin
        self.url = server.url
        self.tools_model = f"lab/{MODEL}"

    @classmethod
    @contextlib.contextmanager
    def running(cls, home: Path) -> Iterator[Gateway]:
        standin = ScriptedStandIn().start()
        server = ServerProcess(home, SUPEROLLAMA_MAX_BODY_BYTES=str(1024 * 1024)).start()
        try:
            done = server.cli("connect", "openai", standin.url + "/v1", "--name", "lab")
            assert done.returncode == 0, done.stderr
            created = server.cli("keys", "create", "--name", "ops", "--role", "admin")
            assert created.returncode == 0, created.stderr
            yield cls(server, created.stdout.strip(), standin)
        finally:
            server.stop()
            standin.stop()

    def usage_rows(self) -> list[dict[str, Any]]:
        """The usage ledger's request rows (admin API)."""
        got = httpx.get(
            self.url + "/admin/v1/usage",
            params={"by": "request"},
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=30,
        )
        assert got.status_code == 200, got.text
        return list(got.json()["rows"])
