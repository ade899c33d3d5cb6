"""``superollama run``: a streamed terminal chat, like ``ollama run``."""

from __future__ import annotations

import sys
from typing import Any

from superollama.client import Client

__all__ = ["one_shot", "repl"]

HELP = """Commands:
  /clear   forget the conversation
  /bye     exit (also Ctrl-D)
  /?       this help"""


def _answer(client: Client, name: str, messages: list[dict[str, Any]]) -> str:
    parts: list[str] = []
    for delta in client.chat.stream(name, messages):
        parts.append(delta)
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(parts)


def one_shot(client: Client, name: str, prompt: str) -> None:
    _answer(client, name, [{"role": "user", "content": prompt}])


def repl(client: Client, name: str) -> None:
    client.chat.model(name)  # fail fast on an unknown model
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
