"""OpenAI batches end to end, through the official OpenAI SDK against a real ``superollama serve`` with the
bundled SmolLM2 on llama.cpp: a JSONL file uploaded (purpose ``batch``, checked line by line), a batch
created, run by the gateway as its creator key, polled to ``completed``, its output and error files read in
OpenAI's line format; a bad line (a model that does not exist) in the error file; cancelling; listing with
pagination; usage metered to the key in the ledger; and a batch that survives its server being killed
mid-batch — the restarted server sends only what had not finished (counted in the usage ledger)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from tests.e2e.conftest import ServerProcess, wait_until

MODEL = "smollm2:135m"
FINAL = ("completed", "failed", "expired", "cancelled")


def chat_line(custom_id: str, text: str, *, model: str = MODEL, max_tokens: int = 8) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(line) for line in lines).encode() + b"\n"


def run_to_end(client: OpenAI, batch_id: str, timeout: float = 300) -> Any:
    found: dict[str, Any] = {}

    def ended() -> bool:
        found["batch"] = client.batches.retrieve(batch_id)
        return found["batch"].status in FINAL

    assert wait_until(ended, timeout=timeout, interval=0.3), f"batch {batch_id}: {found.get('batch')}"
    return found["batch"]


def lines_of(client: OpenAI, file_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line.strip()]


class Keys:
    def __init__(self, server: ServerProcess) -> None:
        created = server.admin("POST", "/admin/v1/keys", json={"name": "batch-admin", "role": "admin"})
        assert created.status_code == 201, created.text
        self.admin = str(created.json()["key"])
        self.users: dict[str, tuple[str, str]] = {}  # name -> (key, key id)
        self.server = server

    def user(self, name: str) -> tuple[str, str]:
        if name not in self.users:
            made = self.server.admin(
                "POST",
                "/admin/v1/keys",
                json={"name": name, "role": "user"},
                headers={"Authorization": f"Bearer {self.admin}"},
            )
            assert made.status_code == 201, made.text
            self.users[name] = (str(made.json()["key"]), str(made.json()["id"]))
        return self.users[name]

    def usage_rows(self) -> list[dict[str, Any]]:
        got = self.server.admin(
            "GET",
            "/admin/v1/usage",
            params={"by": "request", "since": "1d"},
            headers={"Authorization": f"Bearer {self.admin}"},
        )
        assert got.status_code == 200, got.text
        return list(got.json()["rows"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("home")
    srv = ServerProcess(home, SUPEROLLAMA_BATCH_POLL="0.2", SUPEROLLAMA_BATCH_CONCURRENCY="2").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def keys(server: ServerProcess) -> Keys:
    return Keys(server)


@pytest.fixture(scope="module")
def client(server: ServerProcess, keys: Keys) -> OpenAI:
    key, _ = keys.user("batcher")
    return OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def test_a_batch_completes_with_output_and_error_files_and_usage_per_key(client: OpenAI, keys: Keys) -> None:
    lines = [
        chat_line("greet", "Say hello."),
        chat_line("count", "Count to three."),
        chat_line("bad-model", "Hi", model="no-such-model"),
        chat_line("color", "Name a color."),
    ]
    uploaded = client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(lines))
    created = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert created.object == "batch" and created.id.startswith("batch_")
    assert created.status in ("validating", "in_progress") and created.metadata == {"job": "nightly"}
    assert created.expires_at is not None and created.expires_at - created.created_at == 24 * 3600

    batch = run_to_end(client, created.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        4,
        3,
        1,
    )
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.output_file_id and batch.error_file_id

    output = lines_of(client, batch.output_file_id)
    assert [o["custom_id"] for o in output] == ["greet", "count", "color"]  # input order
    for o in output:
        assert set(o) == {"id", "custom_id", "response", "error"} and o["error"] is None
        assert o["id"].startswith("batch_req_")
        assert set(o["response"]) == {"status_code", "request_id", "body"}
        assert o["response"]["status_code"] == 200 and o["response"]["request_id"]
        body = o["response"]["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] >= 1
    errors = lines_of(client, batch.error_file_id)
    assert [e["custom_id"] for e in errors] == ["bad-model"]
    assert errors[0]["response"]["status_code"] == 404 and errors[0]["error"] is None
    assert "no-such-model" in errors[0]["response"]["body"]["error"]["message"]
    meta = client.files.retrieve(batch.output_file_id)
    assert meta.purpose == "batch_output" and meta.filename == f"{batch.id}_output.jsonl"
    outputs = client.files.list(purpose="batch_output")
    assert {batch.output_file_id, batch.error_file_id} <= {f.id for f in outputs.data}

    # the batch's token counts are the answers' usage
    assert batch.usage is not None
    prompt = sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in output)
    completion = sum(o["response"]["body"]["usage"]["completion_tokens"] for o in output)
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (prompt, completion)

    # every request went through the gateway as the batch's key: one ledger row each, its request id
    _, key_id = keys.user("batcher")
    ids = {o["response"]["request_id"] for o in output + errors}

    def metered() -> list[dict[str, Any]]:
        return [r for r in keys.usage_rows() if r["request_id"] in ids]

    assert wait_until(lambda: len(metered()) == 4, timeout=30), keys.usage_rows()[-5:]
    rows = metered()
    assert {r["key_id"] for r in rows} == {key_id}
    assert sorted(r["status"] for r in rows) == [200, 200, 200, 404]
    assert sum(r["completion_tokens"] or 0 for r in rows) == completion


def test_an_upload_names_the_bad_lines(client: OpenAI) -> None:
    good = chat_line("a", "Hi")
    data = (
        json.dumps(good)
        + "\n"
        + json.dumps({**good, "url": "/v1/images"})  # line 2: not a batch endpoint
        + "\n{not json\n"  # line 3
        + json.dumps(good)  # line 4: custom_id "a" again
        + "\n"
        + json.dumps({**good, "custom_id": "e", "body": {"messages": []}})  # line 5: no model
        + "\n"
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("bad.jsonl", data.encode()), purpose="batch")
    message = str(caught.value)
    assert "line 2: url must be one of" in message
    assert "line 3: not valid JSON" in message
    assert "line 4: custom_id 'a' is already used on line 1" in message
    assert "line 5: body needs a model" in message
    with pytest.raises(openai.BadRequestError, match="method must be POST"):
        client.files.create(file=("m.jsonl", jsonl([{**good, "method": "GET"}])), purpose="batch")


def test_a_batch_whose_lines_are_for_another_endpoint_fails_naming_them(client: OpenAI) -> None:
    embed = {
        "custom_id": "e1",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": MODEL, "input": "x"},
    }
    uploaded = client.files.create(
        file=("mixed.jsonl", jsonl([chat_line("c1", "Hi"), embed])), purpose="batch"
    )
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = run_to_end(client, created.id, timeout=60)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    [error] = batch.errors.data
    assert (error.line, error.code, error.param) == (2, "mismatched_endpoint", "url")
    assert batch.output_file_id is None and batch.request_counts is not None
    assert batch.request_counts.total == 0


def test_creating_a_batch_checks_its_parameters(client: OpenAI) -> None:
    doc = client.files.create(file=("doc.txt", b"hello"), purpose="assistants")
    with pytest.raises(openai.BadRequestError, match="purpose 'assistants'"):
        client.batches.create(input_file_id=doc.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError, match="No such File object"):
        client.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    uploaded = client.files.create(file=("one.jsonl", jsonl([chat_line("x", "Hi")])), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="endpoint must be one of"):
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/moderations", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window must be 24h"):
        client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="1h",  # type: ignore[arg-type]
        )
    with pytest.raises(openai.NotFoundError, match="No such batch"):
        client.batches.retrieve("batch_nope")


def test_cancel_stops_sending(client: OpenAI) -> None:
    lines = [chat_line(f"r{i}", f"Write a story about the number {i}.", max_tokens=12) for i in range(12)]
    uploaded = client.files.create(file=("long.jsonl", jsonl(lines)), purpose="batch")
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert wait_until(
        lambda: client.batches.retrieve(created.id).request_counts.completed >= 1,  # type: ignore[union-attr]
        timeout=120,
    )
    cancelled = client.batches.cancel(created.id)
    assert cancelled.status in ("cancelling", "cancelled") and cancelled.cancelling_at is not None
    batch = run_to_end(client, created.id, timeout=120)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    assert batch.request_counts is not None
    done = batch.request_counts.completed + batch.request_counts.failed
    assert 1 <= done < 12  # some were sent, the rest never were
    output = lines_of(client, batch.output_file_id) if batch.output_file_id else []
    assert batch.error_file_id is not None
    errors = lines_of(client, batch.error_file_id)
    unsent = [e for e in errors if e["error"] is not None]
    assert len(unsent) == 12 - done and len(output) == batch.request_counts.completed
    assert all(e["error"]["code"] == "batch_cancelled" and e["response"] is None for e in unsent)
    assert {o["custom_id"] for o in output + errors} == {f"r{i}" for i in range(12)}
    assert client.batches.cancel(created.id).status == "cancelled"  # answered as it is


def test_batches_are_listed_newest_first_in_pages_of_their_key(
    server: ServerProcess, client: OpenAI, keys: Keys
) -> None:
    key, _ = keys.user("lister")
    mine = OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    embed = {
        "custom_id": "e",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": MODEL, "input": "x"},
    }
    uploaded = mine.files.create(file=("e.jsonl", jsonl([embed])), purpose="batch")
    made = [  # the chat endpoint for embeddings lines: each fails validation at once, no model needed
        mine.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    first = mine.batches.list(limit=1)
    assert [b.id for b in first.data] == [made[2]] and first.has_more
    second = mine.batches.list(limit=1, after=made[2])
    assert [b.id for b in second.data] == [made[1]] and second.has_more
    last = mine.batches.list(limit=5, after=made[1])
    assert [b.id for b in last.data] == [made[0]] and not last.has_more
    assert [b.id for b in mine.batches.list(limit=1)] == made[::-1]  # the SDK follows the pages
    # another key's batches are not there for it
    assert made[0] not in [b.id for b in client.batches.list(limit=100).data]
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve(made[0])
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel(made[0])


def _finished_lines(home_db: str, batch_id: str) -> set[int]:
    with sqlite3.connect(home_db) as db:
        rows = db.execute(
            "SELECT line FROM batch_requests WHERE batch_id = ? AND state != 'pending'", (batch_id,)
        ).fetchall()
    return {int(line) for (line,) in rows}


@pytest.mark.timeout(600)  # two server starts and ten generations on a shared CPU
def test_a_batch_resumes_after_its_server_is_killed(fresh_server: ServerProcess) -> None:
    """Killed (SIGKILL) mid-batch, started again: the batch completes, every request answered once in
    its output, and the restarted server sends exactly the requests that had not finished — none of
    those finished before the kill (the usage ledger's rows of the second run, by request id)."""
    srv = fresh_server
    srv.env.update(SUPEROLLAMA_BATCH_POLL="0.2", SUPEROLLAMA_BATCH_CONCURRENCY="2")
    srv.start()
    client = OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=120)
    total = 10
    lines = [chat_line(f"q{i}", f"Tell me a fact about the number {i}.", max_tokens=12) for i in range(total)]
    uploaded = client.files.create(file=("resume.jsonl", jsonl(lines)), purpose="batch")
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert wait_until(
        lambda: client.batches.retrieve(created.id).request_counts.completed >= 2,  # type: ignore[union-attr]
        timeout=240,
    )
    srv.stop(signal.SIGKILL)
    before = _finished_lines(str(srv.home / "registry.db"), created.id)
    assert 2 <= len(before) < total, before  # killed mid-batch

    restarted_at = time.time()
    srv.start()
    client = OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=120)
    batch = run_to_end(client, created.id)
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (total, total)
    assert batch.output_file_id is not None and batch.error_file_id is None
    output = lines_of(client, batch.output_file_id)
    assert [o["custom_id"] for o in output] == [f"q{i}" for i in range(total)]
    srv.stop()  # a clean stop flushes the usage ledger

    with sqlite3.connect(str(srv.home / "registry.db")) as db:
        rows = db.execute(
            "SELECT request_id, created_at FROM usage WHERE request_id LIKE ?",
            (f"req_{created.id.removeprefix('batch_')}_%",),
        ).fetchall()
    second_run = [
        int(request_id.rsplit("_", 1)[1])
        for request_id, at in rows
        if datetime.fromisoformat(at).replace(tzinfo=UTC).timestamp() >= restarted_at
    ]
    assert sorted(second_run) == sorted(set(range(1, total + 1)) - before), (second_run, before)


def test_the_cli_creates_lists_shows_and_cancels(server: ServerProcess, keys: Keys, tmp_path: Path) -> None:
    key, _ = keys.user("cli-user")
    source = tmp_path / "cli.jsonl"
    # long enough that the cancel, three CLI runs later, comes before the end (3 short lines were done
    # before it on a fast machine)
    lines = [chat_line(f"c{i}", f"Write a story about the number {i}.", max_tokens=16) for i in range(48)]
    source.write_bytes(jsonl(lines))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = server.cli("--api-key", key, "batches", *args)
        assert done.returncode == 0, done.stderr
        return done

    made = json.loads(cli("create", str(source), "--metadata", "team=search", "--json").stdout)
    assert made["status"] in ("validating", "in_progress") and made["metadata"] == {"team": "search"}
    client = OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    assert client.files.retrieve(made["input_file_id"]).purpose == "batch"
    listed = cli("ls").stdout
    assert made["id"][:16] in listed and "/v1/chat" in listed  # a table fit to the terminal
    cancelled = cli("cancel", made["id"]).stdout
    assert made["id"] in cancelled and ("cancelling" in cancelled or "cancelled" in cancelled)
    batch = run_to_end(client, made["id"], timeout=120)
    assert batch.status == "cancelled"
    shown = json.loads(cli("show", made["id"]).stdout)
    assert shown["status"] == "cancelled" and shown["request_counts"]["total"] in (0, 48)
    again = json.loads(cli("create", made["input_file_id"], "--json").stdout)  # an uploaded file's id
    assert again["input_file_id"] == made["input_file_id"]
    assert run_to_end(client, again["id"]).status == "completed"
    assert [b["id"] for b in json.loads(cli("ls", "--json").stdout)] == [again["id"], made["id"]]
    bad = server.cli("--api-key", key, "batches", "show", "batch_nope")
    assert bad.returncode != 0 and "No such batch" in bad.stderr
