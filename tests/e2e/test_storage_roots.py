"""Storage roots through a real ``superollama serve``: ``mv --to`` takes only a declared root (CLI and admin
API), a version made by ``cp`` keeps its files when the other moves, moving back home works, requests keep
succeeding throughout (one worker and two), and ``rm`` leaves no ``blobs/`` behind."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import ServerProcess, wait_until

MODEL = "smollm2:135m"


def _start(server: ServerProcess, roots: str, workers: int = 1) -> ServerProcess:
    server.env["SUPEROLLAMA_STORAGE_ROOTS"] = roots
    server.env["SUPEROLLAMA_WORKERS"] = str(workers)
    return server.start()


def _storage(server: ServerProcess) -> dict[str, dict[str, Any]]:
    listed = server.cli("storage", "--json")
    assert listed.returncode == 0, listed.stderr
    return {r["name"]: r for r in json.loads(listed.stdout)}


def _show(server: ServerProcess, name: str) -> dict[str, Any]:
    shown = server.cli("show", name, "--json")
    assert shown.returncode == 0, shown.stderr
    return dict(json.loads(shown.stdout))


def _chat(url: str, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


class ChatLoop:
    """Chats with each model in turn until stopped, recording every failure (the OpenAI API)."""

    def __init__(self, url: str, models: list[str]) -> None:
        self.url, self.models = url, models
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            for model in self.models:
                try:
                    _chat(self.url, model)
                    self.ok += 1
                except (AssertionError, httpx.HTTPError) as exc:
                    self.failures.append(f"{model}: {exc}")

    def __enter__(self) -> ChatLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(300)


@pytest.mark.parametrize("workers", [1, 2])
def test_mv_to_takes_only_a_declared_root(fresh_server: ServerProcess, tmp_path: Path, workers: int) -> None:
    fast, undeclared = tmp_path / "fast", tmp_path / "undeclared"
    fast.mkdir()
    undeclared.mkdir()
    server = _start(fresh_server, f"fast={fast},missing={tmp_path / 'missing'}", workers)

    top_level = {p for p in ("/blobs", "/etc/blobs", "/root/blobs") if Path(p).exists()}
    valid = f"valid roots: home ({server.home.resolve()}), fast ({fast})"
    escapes = f"{fast}/../../../etc"
    for to in [str(undeclared), "/etc", "/", "/root", "relative/dir", "blobs", "missing", escapes]:
        result = server.cli("mv", MODEL, "--to", to)
        said = " ".join(result.stderr.split())  # the console wraps long lines
        assert result.returncode == 1 and valid in said, (to, result.stdout, result.stderr)
        answer = server.admin("POST", "/admin/v1/move", json={"name": MODEL, "to": to})
        assert answer.status_code == 400, (to, answer.text)
        error = answer.json()["error"]
        assert error["param"] == "to" and valid in error["message"], (to, error)
    assert list(undeclared.iterdir()) == [] and list(fast.iterdir()) == []
    assert {p for p in ("/blobs", "/etc/blobs", "/root/blobs") if Path(p).exists()} == top_level
    assert not (Path.cwd() / "blobs").exists()
    roots = _storage(server)
    assert list(roots) == ["home", "fast", "missing"]
    assert roots["home"]["path"] == str(server.home.resolve()) and roots["home"]["versions"] == [MODEL]
    assert roots["fast"]["usable"] and roots["fast"]["free_bytes"] > 0 and roots["fast"]["versions"] == []
    assert not roots["missing"]["usable"] and roots["missing"]["problem"] == "it does not exist"
    assert "storage root 'missing'" in server.log.read_text()  # the warning at start
    table = server.cli("storage")
    assert table.returncode == 0 and "missing" in table.stdout and "unusable" in table.stdout

    jobs = json.loads(server.cli("jobs", "--json").stdout)
    assert not [j for j in jobs if j["kind"] == "move"]  # refused before any job started
    missing = server.admin("POST", "/admin/v1/move", json={"name": "nope:1", "to": "fast"})
    assert missing.status_code == 404


@pytest.mark.parametrize("workers", [1, 2])
def test_move_a_copy_there_and_back_while_both_serve(
    fresh_server: ServerProcess, tmp_path: Path, workers: int
) -> None:
    fast = tmp_path / "fast"
    fast.mkdir()
    server = _start(fresh_server, f"fast={fast}", workers)
    assert _chat(server.url, MODEL)
    assert server.cli("cp", MODEL, "copy:1").returncode == 0
    assert _chat(server.url, "copy:1")
    digest = _show(server, MODEL)["digest"]
    original = server.home / "blobs" / ("sha256-" + digest[7:])
    inode = original.stat().st_ino
    in_fast = fast / "blobs" / original.name

    with ChatLoop(server.url, [MODEL, "copy:1"]) as chats:
        assert wait_until(lambda: chats.ok >= 2, timeout=180)
        moved = server.cli("mv", "copy:1", "--to", "fast")
        assert moved.returncode == 0, moved.stderr
        # the original keeps its file, untouched; the copy has its own in fast
        assert original.is_file() and not original.is_symlink() and original.stat().st_ino == inode
        assert in_fast.is_file() and not in_fast.is_symlink()
        assert f"moved 'copy:1' from home to fast ({fast})" in " ".join(moved.stdout.split())
        assert _show(server, MODEL)["storage_root"] == "home"
        assert _show(server, "copy:1")["storage_root"] == "fast"
        assert _storage(server)["fast"]["versions"] == ["copy:1"]

        same = server.cli("mv", "copy:1", "--to", str(fast))  # by its path: where it is already
        assert same.returncode == 0 and "is in storage root fast" in same.stdout and "already" in same.stdout

        back = server.cli("mv", "copy:1", "--to", "home")
        assert back.returncode == 0, back.stderr
        assert "moved 'copy:1' from fast to home" in back.stdout
        assert list(fast.iterdir()) == []  # its blob and blobs/ went: nothing left behind
        assert original.stat().st_ino == inode

        again = server.cli("mv", "copy:1", "--to", "fast")
        assert again.returncode == 0, again.stderr
        served = chats.ok
        assert wait_until(lambda: chats.ok >= served + 2, timeout=180)  # still served after the moves
    assert chats.failures == [] and chats.ok >= 4

    assert server.cli("stop", "copy:1").returncode == 0
    assert _chat(server.url, "copy:1")  # loads from its new root
    assert any(i["version"] == "copy:1" for i in server.instances())
    assert server.cli("stop", "copy:1").returncode == 0
    removed = server.cli("rm", "copy:1")
    assert removed.returncode == 0, removed.stderr
    assert fast.is_dir() and list(fast.iterdir()) == []  # rm leaves no blobs/ in the root
    assert original.stat().st_ino == inode and _chat(server.url, MODEL)
    events = json.loads(server.cli("events", "--json", "--target", "copy:1").stdout)
    moves = [e["detail"] for e in events if e["action"] == "model.move"]
    assert {(m["from"], m["to"], m["unchanged"]) for m in moves} == {
        ("home", "fast", False),
        ("fast", "fast", True),
        ("fast", "home", False),
    }
