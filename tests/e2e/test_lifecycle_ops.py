"""Model lifecycle against a running server: pulls from stand-ins of the real hubs (HF, the Ollama
registry, a plain https server — no real hub is reachable here), jobs (cancel, restart mid-pull, resume),
and copy / move / rename / delete while a request streams from the model (the stream completes)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from tests.e2e.conftest import ServerProcess, wait_until
from tests.integration.hub_standins import Hub, start

MODEL = "smollm2:135m"


class HubThread:
    def __init__(self) -> None:
        self.hub = Hub()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner = None

    def __enter__(self) -> Hub:
        self._thread.start()
        self._runner = asyncio.run_coroutine_threadsafe(start(self.hub), self.loop).result(10)
        return self.hub

    def __exit__(self, *exc: object) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def hub() -> Iterator[Hub]:
    with HubThread() as h:
        yield h


def _server(tmp_path: Path, hub: Hub, **env: str) -> ServerProcess:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return ServerProcess(home, HF_ENDPOINT=hub.url, SUPEROLLAMA_OLLAMA_REGISTRY=hub.url, **env)


def _chat(server: ServerProcess, model: str) -> str:
    client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    out = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    return out.choices[0].message.content or ""


def test_pull_from_the_hf_hub_and_the_ollama_registry_then_serve(
    tmp_path: Path, hub: Hub, smollm2_gguf: Path
) -> None:
    hub.add_hf_repo("bartowski/SmolLM2-135M-Instruct-GGUF", {"SmolLM2-135M-Instruct-Q4_1.gguf": smollm2_gguf})
    template = b"{{ .System }}\n{{ .Prompt }}"
    hub.add_ollama_model(
        "library/smollm2:135m",
        [
            ("application/vnd.ollama.image.model", smollm2_gguf),
            ("application/vnd.ollama.image.template", template),
        ],
    )
    server = _server(tmp_path, hub, SUPEROLLAMA_BUNDLED_MODEL="false").start()
    try:
        hf = server.cli("pull", "hf://bartowski/SmolLM2-135M-Instruct-GGUF:Q4_1", "--name", "smol-hf:q4")
        assert hf.returncode == 0, hf.stderr
        bare = server.cli("pull", "smollm2:135m")  # a bare name comes from the Ollama registry
        assert bare.returncode == 0, bare.stderr
        names = {m["name"]: m for m in json.loads(server.cli("ls", "--json").stdout)}
        assert {"smol-hf:q4", "smollm2:135m"} <= names.keys()
        assert names["smol-hf:q4"]["source"].startswith("hf://bartowski/SmolLM2-135M-Instruct-GGUF@")
        assert names["smol-hf:q4"]["digest"] == names["smollm2:135m"]["digest"]  # the same bytes, stored once
        shown = json.loads(server.cli("show", "smollm2:135m", "--json").stdout)
        assert shown["quantization"] == "Q4_1"
        assert _chat(server, "smol-hf:q4") and _chat(server, "smollm2:135m")
        missing = server.cli("pull", "hf://bartowski/SmolLM2-135M-Instruct-GGUF:Q8_0", "--name", "x:1")
        assert missing.returncode == 1 and "q8_0" in missing.stderr.lower()
    finally:
        server.stop()


def test_cancel_a_pull_then_resume_it(tmp_path: Path, hub: Hub, smollm2_gguf: Path) -> None:
    served = hub.add_file("smollm2.gguf", smollm2_gguf)
    served.delay = 0.25  # ~25 s for the whole file
    server = _server(tmp_path, hub, SUPEROLLAMA_BUNDLED_MODEL="false").start()
    try:
        body = {"source": f"{hub.url}/files/smollm2.gguf", "name": "slow:1", "background": True}
        job = server.admin("POST", "/admin/v1/pull", json=body).json()
        assert job["state"] == "running"
        assert wait_until(lambda: hub.sent.get("/files/smollm2.gguf", 0) > 10 << 20, timeout=20)
        listed = json.loads(server.cli("jobs", "--json").stdout)
        assert listed[0]["id"] == job["id"] and listed[0]["state"] == "running"
        cancelled = server.cli("jobs", "cancel", job["id"])
        assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
        assert "slow:1" not in server.cli("ls").stdout
        sent_before = hub.sent["/files/smollm2.gguf"]

        served.delay = 0
        again = server.cli("pull", f"{hub.url}/files/smollm2.gguf", "--name", "slow:1")
        assert again.returncode == 0, again.stderr
        total = hub.sent["/files/smollm2.gguf"]
        size = smollm2_gguf.stat().st_size
        assert total - sent_before < size - (8 << 20)  # resumed with Range, not from zero
        assert any("Range" in r.headers for r in hub.gets("/files/smollm2.gguf")[1:])
        assert _chat(server, "slow:1")
    finally:
        server.stop()


def test_a_server_killed_mid_pull_leaves_no_half_model(tmp_path: Path, hub: Hub, smollm2_gguf: Path) -> None:
    import signal

    served = hub.add_file("smollm2.gguf", smollm2_gguf)
    served.delay = 0.25
    server = _server(tmp_path, hub, SUPEROLLAMA_BUNDLED_MODEL="false").start()
    body = {"source": f"{hub.url}/files/smollm2.gguf", "name": "half:1", "background": True}
    job = server.admin("POST", "/admin/v1/pull", json=body).json()
    assert wait_until(lambda: hub.sent.get("/files/smollm2.gguf", 0) > 10 << 20, timeout=20)
    server.stop(signal.SIGKILL)
    server.start()
    try:
        record = server.admin("GET", f"/admin/v1/jobs/{job['id']}").json()
        assert record["state"] == "failed" and "stopped before" in record["error"]
        assert "half:1" not in server.cli("ls").stdout
        served.delay = 0
        assert server.cli("pull", f"{hub.url}/files/smollm2.gguf", "--name", "half:1").returncode == 0
        assert "half:1" in server.cli("ls").stdout
    finally:
        server.stop()


def _long_stream(server: ServerProcess, model: str, done: dict[str, object]) -> threading.Thread:
    def run() -> None:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "Tell a long story"}],
            "max_tokens": 250,
            "stream": True,
            "ignore_eos": True,
        }
        text, finish = [], None
        try:
            with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("event: error"):
                        done["error"] = line
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        for choice in chunk.get("choices", []):
                            text.append((choice.get("delta") or {}).get("content") or "")
                            finish = choice.get("finish_reason") or finish
        except Exception as exc:
            done["error"] = repr(exc)
        done["text"], done["finish"] = "".join(text), finish

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_copy_move_rename_delete_while_a_stream_runs(fresh_server: ServerProcess, tmp_path: Path) -> None:
    disk2 = tmp_path / "disk2"
    disk2.mkdir()
    fresh_server.env["SUPEROLLAMA_STORAGE_ROOTS"] = f"disk2={disk2}"
    server = fresh_server.start()
    assert _chat(server, MODEL)  # loaded

    for op in ("cp", "mv --to", "mv", "rm --force"):
        name = {"cp": MODEL, "mv --to": MODEL, "mv": MODEL, "rm --force": "renamed:1"}[op]
        if op == "rm --force":
            assert _chat(server, name)
        done: dict[str, object] = {}
        thread = _long_stream(server, name, done)
        assert wait_until(lambda: any(i["in_flight"] for i in server.instances()), timeout=30)
        t0 = time.perf_counter()
        if op == "cp":
            result = server.cli("cp", MODEL, "copy:1")
        elif op == "mv --to":
            result = server.cli("mv", MODEL, "--to", "disk2")
        elif op == "mv":
            result = server.cli("mv", MODEL, "renamed:1")
        else:
            result = server.cli("rm", "renamed:1", "--force")
        elapsed = time.perf_counter() - t0
        thread.join(120)
        assert result.returncode == 0, (op, result.stderr)
        assert "error" not in done, (op, done)
        assert done.get("finish") == "length" and done["text"], (op, done, thread.is_alive())
        print(f"{op}: {elapsed * 1000:.0f} ms with a stream running")

    names = [m["name"] for m in json.loads(server.cli("ls", "--json").stdout)]
    assert names == ["copy:1"]
    # the copy never moved: its file stayed in the home; the moved (then renamed, then removed) version's
    # copy in disk2 went with it, blobs/ included
    blob = next((server.home / "blobs").iterdir())
    assert blob.is_file() and not blob.is_symlink()
    assert disk2.is_dir() and list(disk2.iterdir()) == []
    assert _chat(server, "copy:1")
