"""The fake OpenAI upstream: nginx answering fixed bodies, so it is never the bottleneck.

nginx can't parse JSON, so streaming is chosen by path: ``/stream/...chat/completions`` answers a
fixed SSE body (20 ``chat.completion.chunk`` events, a usage chunk, ``data: [DONE]``); any other
``...chat/completions`` answers a fixed ~600-byte ``chat.completion``. ``...embeddings`` and
``GET ...models`` (listing ``bench``) answer under any prefix too, so an OpenAI base URL with or
without ``/v1`` (and with ``/stream``) works unchanged.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

__all__ = [
    "MODEL",
    "chat_json_body",
    "chat_sse_body",
    "embeddings_body",
    "ensure_tools",
    "models_body",
    "nginx_config",
]

MODEL = "bench"
_CREATED = 1_700_000_000
_WORDS = "The quick brown fox jumps over the lazy dog while the gateway relays every byte"


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def chat_json_body() -> str:
    """A ``chat.completion`` with a ``usage`` object, padded to about 600 bytes."""
    body: dict[str, object] = {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion",
        "created": _CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 20,
            "total_tokens": 32,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }
    words: list[str] = []
    while len(_dumps(body)) < 600:
        words.append(_WORDS.split()[len(words) % 15])
        body["choices"][0]["message"]["content"] = " ".join(words) + "."  # type: ignore[index]
    return _dumps(body)


def chat_sse_body(chunks: int = 20) -> str:
    """``chunks`` ``chat.completion.chunk`` events, then a usage chunk, then ``data: [DONE]``."""

    def chunk(delta: dict[str, object], finish: str | None) -> dict[str, object]:
        return {
            "id": "chatcmpl-bench0000000000000000000000",
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [chunk({"content": _WORDS.split()[i % 15] + " "}, None) for i in range(chunks - 2)]
    events.append(chunk({}, "stop"))
    usage = chunk({}, None)
    usage["choices"] = []
    usage["usage"] = {"prompt_tokens": 12, "completion_tokens": chunks - 2, "total_tokens": 12 + chunks - 2}
    events.append(usage)
    return "".join(f"data: {_dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def embeddings_body(dims: int = 128) -> str:
    vector = [round(((i * 37) % 101) / 101 - 0.5, 6) for i in range(dims)]
    return _dumps(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": vector}],
            "model": MODEL,
            "usage": {"prompt_tokens": 4, "total_tokens": 4},
        }
    )


def models_body() -> str:
    model = {"id": MODEL, "object": "model", "created": _CREATED, "owned_by": "bench"}
    return _dumps({"object": "list", "data": [model]})


_PIECE = 3000  # nginx reads its config in 4 KiB buffers: one token must fit, so long bodies are split


def _quoted(text: str) -> str:
    """An nginx single-quoted string; the bodies never hold characters nginx would interpret."""
    for bad in ("'", "\\", "$"):
        if bad in text:
            raise ValueError(f"body holds {bad!r}, which nginx would interpret")
    return f"'{text}'"


def _body(name: str, text: str) -> tuple[str, str]:
    """(map blocks, the ``return`` argument) that make nginx answer ``text``, split into constants."""
    pieces = [text[i : i + _PIECE] for i in range(0, len(text), _PIECE)]
    maps = "".join(
        f"    map $host ${name}_{i} {{ default {_quoted(piece)}; }}\n" for i, piece in enumerate(pieces)
    )
    return maps, '"' + "".join(f"${name}_{i}" for i in range(len(pieces))) + '"'


def nginx_config(prefix: Path, port: int) -> str:
    """A complete nginx.conf: one worker, loopback only, everything under ``prefix``."""
    bodies = {
        "sse": _body("sse", chat_sse_body()),
        "chat": _body("chat", chat_json_body()),
        "emb": _body("emb", embeddings_body()),
        "models": _body("models", models_body()),
    }
    maps = "".join(m for m, _ in bodies.values())
    return f"""
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_body_buffer_size 1m;
    client_max_body_size 8m;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    tcp_nodelay on;
{maps}    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location ~ ^/stream/.*chat/completions$ {{
            default_type text/event-stream;
            add_header Cache-Control no-cache;
            return 200 {bodies["sse"][1]};
        }}
        location ~ chat/completions$ {{
            default_type application/json;
            return 200 {bodies["chat"][1]};
        }}
        location ~ embeddings$ {{
            default_type application/json;
            return 200 {bodies["emb"][1]};
        }}
        location ~ models$ {{
            default_type application/json;
            return 200 {bodies["models"][1]};
        }}
        location / {{
            default_type application/json;
            return 404 '{{"error":{{"message":"not found","type":"invalid_request_error"}}}}';
        }}
    }}
}}
"""


def ensure_tools() -> str:
    """Install nginx and wrk from Debian's packages when missing (as root, non-interactively).

    Returns the nginx binary's path; raises RuntimeError with the reason when they can't be had.
    """
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx and shutil.which("wrk"):
        return nginx
    if not shutil.which("apt-get"):
        raise RuntimeError("nginx and wrk are needed and apt-get is not here: install them by hand")
    import os

    if os.geteuid() != 0:
        raise RuntimeError("nginx and wrk are needed: run as root, or `apt-get install nginx-light wrk`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("installing nginx and wrk from Debian's packages …", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
    for nginx_pkg in ("nginx-light", "nginx"):
        done = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", nginx_pkg, "wrk"],
            env=env,
            check=False,
        )
        if done.returncode == 0:
            break
    else:
        raise RuntimeError("apt-get could not install nginx (nginx-light or nginx) and wrk")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists() or not shutil.which("wrk"):
        raise RuntimeError("nginx or wrk still missing after apt-get install")
    return nginx
