"""RAG end to end, through the official OpenAI SDK against a real ``superollama serve``: files (upload,
list, content, delete, the fine-tuning JSONL check), vector stores with files and file batches indexed in
the background by the real all-MiniLM-L6-v2 (transformers runtime; pulled from a local stand-in of the HF
hub, the real hub being unreachable here), search with filters and a score threshold on both engines,
and chat grounded in the documents, answered by the real SmolLM2 on llama.cpp with file citations. The
CLI's ``files``, ``vector-stores`` and ``grounding`` commands drive the same server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from tests.e2e.conftest import ServerProcess, wait_until
from tests.e2e.test_hf_transformers import _files
from tests.e2e.test_lifecycle_ops import HubThread
from tests.rag_docs import make_pdf

FILLER = (
    "The weather in the valley changes quickly. Travellers are advised to carry a coat, water and a map. "
    "Shops close early on market days, and the post office opens only in the morning. "
)
DOCS: dict[str, bytes] = {
    "keeper.md": (
        b"# The Varnholt lighthouse\n\nThe keeper of the Varnholt lighthouse is named Orsolya Brenn. "
        b"She lights the lamp at dusk and writes the weather in a logbook.\n\n## Visiting\n\n"
        b"Visitors may climb the tower on Sundays. The stairs have 212 steps, and the gallery at the top "
        b"looks over the northern bay, where seals rest on the rocks at low tide. Tickets are sold at the "
        b"harbour office."
    ),
    "cider.html": (
        "<html><head><style>p{color:red}</style></head><body><h1>Orchard</h1><p>"
        + FILLER
        + "</p><p>The secret ingredient of the Tamsk orchard cider is juniper berries.</p>"
        "<script>var hidden = 'do not index';</script></body></html>"
    ).encode(),
    "ferry.pdf": make_pdf(
        ["Ferry timetable.", "The Quillon ferry departs from pier nine at 7:45 every Tuesday.", FILLER[:90]]
    ),
    "archive.txt": (
        "Archive notes.\n\nThe password of the Eldmoor archive door is heliotrope. "
        "It changes every spring.\n\n" + FILLER
    ).encode(),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Iterator[ServerProcess]:
    with HubThread() as hub:
        hub.add_hf_repo("sentence-transformers/all-MiniLM-L6-v2", _files(minilm_dir))
        home = tmp_path_factory.mktemp("home")
        # two workers: the replica grounds chats as the primary does (bundled SmolLM2: smollm2:135m)
        srv = ServerProcess(
            home, HF_ENDPOINT=hub.url, SUPEROLLAMA_WORKERS="2", SUPEROLLAMA_CHANGE_POLL="1"
        ).start()
        try:
            pulled = srv.cli("pull", "hf://sentence-transformers/all-MiniLM-L6-v2", "--name", "all-minilm")
            assert pulled.returncode == 0, pulled.stderr
            yield srv
        finally:
            srv.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def uploaded(client: OpenAI) -> dict[str, Any]:
    return {name: client.files.create(file=(name, data), purpose="assistants") for name, data in DOCS.items()}


@pytest.fixture(scope="module")
def store(client: OpenAI, uploaded: dict[str, Any]) -> Any:
    vs = client.vector_stores.create(name="town facts")
    assert vs.object == "vector_store" and vs.id.startswith("vs_")
    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=vs.id,
        file_ids=[f.id for name, f in uploaded.items() if name != "archive.txt"],
        chunking_strategy={
            "type": "static",
            "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20},
        },
        poll_interval_ms=200,
    )
    assert batch.status == "completed", batch
    assert batch.file_counts.completed == 3 and batch.file_counts.total == 3
    archive = client.vector_stores.files.create_and_poll(
        vector_store_id=vs.id,
        file_id=uploaded["archive.txt"].id,
        attributes={"kind": "secret", "year": 2024},
        chunking_strategy={
            "type": "static",
            "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20},
        },
        poll_interval_ms=200,
    )
    assert archive.status == "completed" and archive.usage_bytes > 0 and archive.last_error is None
    return client.vector_stores.retrieve(vs.id)


def test_files_upload_list_content_and_the_fine_tune_check(client: OpenAI, uploaded: dict[str, Any]) -> None:
    f = uploaded["keeper.md"]
    assert f.object == "file" and f.id.startswith("file-") and f.bytes == len(DOCS["keeper.md"])
    assert f.filename == "keeper.md" and f.purpose == "assistants"
    assert client.files.retrieve(f.id).filename == "keeper.md"
    assert client.files.content(f.id).content == DOCS["keeper.md"]
    listed = [x.id for x in client.files.list(purpose="assistants")]
    assert {x.id for x in uploaded.values()} <= set(listed)

    good = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    )
    tune = client.files.create(file=("train.jsonl", (good + "\n").encode()), purpose="fine-tune")
    assert tune.purpose == "fine-tune" and [x.id for x in client.files.list(purpose="fine-tune")] == [tune.id]
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("bad.jsonl", (good + "\n{oops\n").encode()), purpose="fine-tune")
    assert bad.value.status_code == 400 and "line 2: not valid JSON" in bad.value.message
    with pytest.raises(openai.BadRequestError, match="purpose must be one of"):
        client.files.create(file=("x.txt", b"x"), purpose="wrong")  # type: ignore[arg-type]
    deleted = client.files.delete(tune.id)
    assert deleted.deleted and deleted.id == tune.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(tune.id)


def test_vector_store_counts_files_and_search_with_filters(
    client: OpenAI, store: Any, uploaded: dict[str, Any]
) -> None:
    assert store.file_counts.completed == 4 and store.file_counts.total == 4 and store.status == "completed"
    assert store.usage_bytes > 0 and store.name == "town facts"
    assert store.id in [s.id for s in client.vector_stores.list()]
    files = list(client.vector_stores.files.list(vector_store_id=store.id))
    assert {f.id for f in files} == {f.id for f in uploaded.values()} and all(
        f.status == "completed" for f in files
    )

    expected = {
        "Who keeps the Varnholt lighthouse?": "keeper.md",
        "What is in the Tamsk orchard cider?": "cider.html",
        "When does the Quillon ferry leave?": "ferry.pdf",
        "What is the password of the Eldmoor archive?": "archive.txt",
    }
    for question, filename in expected.items():
        page = client.vector_stores.search(vector_store_id=store.id, query=question, max_num_results=3)
        hits = list(page)
        assert hits[0].filename == filename, (question, [(h.filename, h.score) for h in hits])
        assert 0 < hits[0].score <= 1 and hits[0].content[0].type == "text"
    top = next(iter(client.vector_stores.search(vector_store_id=store.id, query="lighthouse keeper name")))
    assert "Orsolya" in top.content[0].text

    only = client.vector_stores.search(
        vector_store_id=store.id,
        query="Who keeps the Varnholt lighthouse?",
        filters={"type": "eq", "key": "kind", "value": "secret"},
    )
    assert [h.filename for h in only] and {h.filename for h in only} == {"archive.txt"}
    assert next(iter(only)).attributes == {"kind": "secret", "year": 2024}
    strict = client.vector_stores.search(
        vector_store_id=store.id,
        query="Who keeps the Varnholt lighthouse?",
        ranking_options={"score_threshold": 0.99},
    )
    assert list(strict) == []
    with pytest.raises(openai.BadRequestError, match="max_num_results"):
        client.vector_stores.search(vector_store_id=store.id, query="x", max_num_results=99)


def test_unreadable_files_fail_with_their_reason_and_deletion_removes_chunks(client: OpenAI) -> None:
    vs = client.vector_stores.create(name="scratch", extra_body={"engine": "lancedb"})
    good = client.files.create(
        file=("moon.txt", b"The moon base Selene-4 grows basil in its greenhouse."), purpose="assistants"
    )
    bad = client.files.create(file=("blob.bin", b"\x00\x01binary"), purpose="assistants")
    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=vs.id, file_ids=[good.id, bad.id], poll_interval_ms=200
    )
    assert (batch.file_counts.completed, batch.file_counts.failed) == (1, 1)
    failed = client.vector_stores.files.retrieve(vector_store_id=vs.id, file_id=bad.id)
    assert failed.status == "failed" and failed.last_error is not None
    assert failed.last_error.code == "unsupported_file" and "binary" in failed.last_error.message
    listed = client.vector_stores.file_batches.list_files(
        vector_store_id=vs.id, batch_id=batch.id, filter="failed"
    )
    assert [f.id for f in listed] == [bad.id]
    hits = list(client.vector_stores.search(vector_store_id=vs.id, query="what grows on the moon base?"))
    assert hits and hits[0].file_id == good.id

    client.vector_stores.files.update(vector_store_id=vs.id, file_id=good.id, attributes={"planet": "moon"})
    again = client.vector_stores.files.poll(vector_store_id=vs.id, file_id=good.id, poll_interval_ms=200)
    assert again.status == "completed" and again.attributes == {"planet": "moon"}
    moon = {"type": "eq", "key": "planet", "value": "moon"}
    hits = list(client.vector_stores.search(vector_store_id=vs.id, query="what grows there?", filters=moon))
    assert [h.file_id for h in hits] == [good.id] and hits[0].attributes == {"planet": "moon"}

    many = [
        client.files.create(
            file=(f"log{i}.txt", f"Entry {i}: the rover drove {i} km.".encode()), purpose="assistants"
        )
        for i in range(24)
    ]
    batch = client.vector_stores.file_batches.create(vector_store_id=vs.id, file_ids=[m.id for m in many])
    cancelled = client.vector_stores.file_batches.cancel(vector_store_id=vs.id, batch_id=batch.id)
    assert cancelled.status == "cancelled" and cancelled.file_counts.in_progress == 0
    counts = cancelled.file_counts
    assert counts.cancelled + counts.completed == 24 and counts.cancelled > 0, counts
    left = {
        f.id
        for f in client.vector_stores.file_batches.list_files(
            vector_store_id=vs.id, batch_id=batch.id, filter="cancelled"
        )
    }
    found = client.vector_stores.search(
        vector_store_id=vs.id, query="how far did the rover drive?", max_num_results=50
    )
    assert left and not left & {h.file_id for h in found}  # a cancelled file keeps no chunk

    client.vector_stores.files.delete(vector_store_id=vs.id, file_id=good.id)
    after = client.vector_stores.search(vector_store_id=vs.id, query="what grows on the moon base?")
    assert good.id not in {h.file_id for h in after}
    client.vector_stores.update(vs.id, name="renamed", metadata={"team": "moon"})
    assert client.vector_stores.retrieve(vs.id).metadata == {"team": "moon"}
    assert client.vector_stores.delete(vs.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(vs.id)
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.create(name="x", extra_body={"embedding_model": "no-such-model"})


def test_grounded_chat_answers_from_the_documents_with_citations(
    server: ServerProcess, client: OpenAI, store: Any, uploaded: dict[str, Any]
) -> None:
    put = server.admin(
        "PUT", "/admin/v1/grounding/smollm2:135m", json={"vector_store_ids": [store.id], "top_k": 1}
    )
    assert put.status_code == 200, put.text
    question = [{"role": "user", "content": "What is the name of the keeper of the Varnholt lighthouse?"}]

    def by_worker() -> dict[str, list[dict[str, object]]]:
        """Each worker's annotations, on new connections until both have answered."""
        seen: dict[str, list[dict[str, object]]] = {}
        for _ in range(40):
            raw = httpx.post(
                server.url + "/v1/chat/completions",
                json={"model": "smollm2:135m", "messages": question, "max_tokens": 4},
                headers={"Connection": "close"},
                timeout=120,
            )
            assert raw.status_code == 200, raw.text
            seen[raw.headers["X-Superollama-Worker"]] = (
                raw.json()["choices"][0]["message"].get("annotations") or []
            )
            if len(seen) == 2:
                break
        return seen

    # every worker grounds the model (the replica within SUPEROLLAMA_CHANGE_POLL seconds)
    assert wait_until(lambda: (a := by_worker()) and len(a) == 2 and all(a.values()), timeout=30)
    out = client.chat.completions.create(
        model="smollm2:135m", messages=question, max_tokens=48, temperature=0
    )
    message = out.choices[0].message
    assert message.annotations, out
    first = message.annotations[0]
    assert first.type == "file_citation"
    assert first.model_extra is not None and first.model_extra["file_id"] == uploaded["keeper.md"].id
    assert first.model_extra["file_citation"]["filename"] == "keeper.md"
    assert "Orsolya" in (message.content or ""), message.content
    assert out.usage is not None and out.usage.prompt_tokens > 60  # the sources went in

    chunks = list(
        client.chat.completions.create(
            model="smollm2:135m", messages=question, max_tokens=48, temperature=0, stream=True
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].model_extra and deltas[0].model_extra["annotations"][0]["filename"] == "keeper.md"
    assert "Orsolya" in "".join(d.content or "" for d in deltas)

    answers = by_worker()
    assert len(answers) == 2, answers  # both workers cite the same source
    assert all(cited and cited[0]["file_id"] == uploaded["keeper.md"].id for cited in answers.values())

    assert server.admin("DELETE", "/admin/v1/grounding/smollm2:135m").status_code == 200
    # the replica reads groundings every SUPEROLLAMA_CHANGE_POLL seconds
    assert wait_until(lambda: (a := by_worker()) and len(a) == 2 and not any(a.values()), timeout=30)
    plain = client.chat.completions.create(
        model="smollm2:135m", messages=question, max_tokens=20, temperature=0
    )
    assert not plain.choices[0].message.annotations
    bad = server.admin("PUT", "/admin/v1/grounding/smollm2:135m", json={"vector_store_ids": ["vs_nope"]})
    assert bad.status_code == 404 and "vs_nope" in bad.json()["error"]["message"]


def test_the_cli_uploads_indexes_searches_and_grounds(server: ServerProcess, tmp_path: Path) -> None:
    doc = tmp_path / "recipes.md"
    doc.write_text("# Soup\n\nThe Brakkon soup is seasoned with smoked paprika and dill.\n")
    created = server.cli("vector-stores", "create", "cli store")
    assert created.returncode == 0, created.stderr
    vs_id = created.stdout.strip()
    added = server.cli(
        "vector-stores", "add", vs_id, str(doc), "--max-tokens", "100", "--attribute", "lang=en"
    )
    assert added.returncode == 0 and "1 completed" in added.stdout, added.stdout + added.stderr
    found = server.cli(
        "vector-stores", "search", vs_id, "how is Brakkon soup seasoned?", "--where", "lang=en", "--json"
    )
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert hits[0]["filename"] == "recipes.md" and "paprika" in hits[0]["content"][0]["text"]
    listed = {s["id"]: s for s in json.loads(server.cli("vector-stores", "ls", "--json").stdout)}
    assert listed[vs_id]["file_counts"]["completed"] == 1 and listed[vs_id]["name"] == "cli store"
    assert "cli store" in server.cli("vector-stores", "ls").stdout
    files = json.loads(server.cli("files", "ls", "--json").stdout)
    file_id = next(f["id"] for f in files if f["filename"] == "recipes.md")
    grounded = server.cli("grounding", "set", "smollm2:135m", "--vector-store", vs_id, "--top-k", "1")
    assert grounded.returncode == 0 and "top 1" in grounded.stdout, grounded.stderr
    assert vs_id in server.cli("grounding", "ls").stdout
    assert server.cli("grounding", "rm", "smollm2:135m").returncode == 0
    missing = server.cli("vector-stores", "add", vs_id, "file-missing")
    assert missing.returncode == 1 and "file-missing" in missing.stderr
    assert server.cli("files", "rm", file_id).returncode == 0
    after = json.loads(server.cli("vector-stores", "search", vs_id, "Brakkon soup", "--json").stdout)
    assert after == []  # a deleted file leaves the vector stores it was in
    assert server.cli("vector-stores", "rm", vs_id).returncode == 0
    assert vs_id not in {s["id"] for s in json.loads(server.cli("vector-stores", "ls", "--json").stdout)}


def test_files_and_vector_stores_belong_to_the_key_that_made_them(server: ServerProcess) -> None:
    """Runs last in this module: once a key exists, /v1 needs one."""
    keys = []
    for name in ("alice", "bob"):
        made = server.cli("keys", "create", "--name", name)
        assert made.returncode == 0, made.stderr
        keys.append(made.stdout.strip())
    alice, bob = (OpenAI(base_url=server.url + "/v1", api_key=k, max_retries=0, timeout=300) for k in keys)
    f = alice.files.create(
        file=("alice.txt", b"Alice keeps her bicycle in the blue shed."), purpose="assistants"
    )
    vs = alice.vector_stores.create(name="alice's")
    done = alice.vector_stores.files.create_and_poll(
        vector_store_id=vs.id, file_id=f.id, poll_interval_ms=200
    )
    assert done.status == "completed"
    assert [x.id for x in alice.files.list()] == [f.id] and [x.id for x in alice.vector_stores.list()] == [
        vs.id
    ]
    assert list(bob.files.list()) == [] and list(bob.vector_stores.list()) == []
    for call in (
        lambda: bob.files.retrieve(f.id),
        lambda: bob.files.content(f.id),
        lambda: bob.files.delete(f.id),
        lambda: bob.vector_stores.retrieve(vs.id),
        lambda: bob.vector_stores.search(vector_store_id=vs.id, query="bicycle"),
        lambda: bob.vector_stores.files.create(vector_store_id=vs.id, file_id=f.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    bob_vs = bob.vector_stores.create(name="bob's")
    with pytest.raises(openai.NotFoundError):  # bob cannot index alice's file in his own store either
        bob.vector_stores.files.create(vector_store_id=bob_vs.id, file_id=f.id)
    hits = list(alice.vector_stores.search(vector_store_id=vs.id, query="where is the bicycle?"))
    assert hits and hits[0].file_id == f.id
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0).files.list()
