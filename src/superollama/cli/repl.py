"""``superollama run``: a streamed terminal chat, like ``ollama run``."""

from __future__ import annotations

import sys
from typing import Any

from superollama.cli.client import AdminClient

__all__ = ["one_shot", "repl"]

HELP = """Commands:
  /clear   forget the conversation
  /bye     exit (also Ctrl-D)
  /?       this help"""


def _answer(client: AdminClient, name: str, messages: list[dict[str, Any]]) -> str:
    parts: list[str] = []
    for delta in client.stream_chat({"model": name, "messages": messages, "stream": True}):
        parts.append(delta)
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(parts)


def one_shot(client: AdminClient, name: str, prompt: str) -> None:
    _answer(client, name, [{"role": "user", "content": prompt}])


def repl(client: AdminClient, name: str) -> None:
    client.request("GET", f"/v1/models/{name}")  # fail fast on an unknown model
    messages: list[dict[str, Any]] = []
    while True:
        try:
            line = input(">>> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/bye", "/exit", "/quit"):
            return
        if text == "/clear":
            messages.clear()
            print("Cleared session context")
            continue
        if text in ("/?", "/help"):
            print(HELP)
            continue
        messages.append({"role": "user", "content": text})
        try:
            reply = _answer(client, name, messages)
        except KeyboardInterrupt:
            print()
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": reply})
