"""The Responses API's ``file_search`` tool of a running ``superollama serve``, through the official
``openai`` SDK and raw HTTP: documents uploaded and indexed by the real all-MiniLM-L6-v2 (a sqlite-vec
store and a LanceDB one), the answer written by the real SmolLM2 on llama.cpp from the chunks found, with
the ``file_search_call`` item (its results when ``include`` asks), file citations, the stream's events in
order, the errors of bad tools, and the key rules of the vector stores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.responses import ResponseFileSearchToolCall, ResponseOutputMessage
from tests.e2e.conftest import ServerProcess
from tests.e2e.test_hf_transformers import _files
from tests.e2e.test_lifecycle_ops import HubThread
from tests.e2e.test_rag import DOCS

MODEL = "smollm2:135m"
KEEPER_Q = "What is the name of the keeper of the Varnholt lighthouse?"
STATIC = {"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Iterator[ServerProcess]:
    with HubThread() as hub:
        hub.add_hf_repo("sentence-transformers/all-MiniLM-L6-v2", _files(minilm_dir))
        # two workers: the replica answers file_search as the primary does
        srv = ServerProcess(
            tmp_path_factory.mktemp("home"), HF_ENDPOINT=hub.url, SUPEROLLAMA_WORKERS="2"
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
def stores(client: OpenAI, uploaded: dict[str, Any]) -> dict[str, str]:
    """``town`` (sqlite-vec): the lighthouse, the cider and the ferry; ``archive`` (LanceDB): the archive
    notes, with attributes."""
    town = client.vector_stores.create(name="town")
    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=town.id,
        file_ids=[uploaded[n].id for n in ("keeper.md", "cider.html", "ferry.pdf")],
        chunking_strategy=STATIC,  # type: ignore[arg-type]
        poll_interval_ms=200,
    )
    assert batch.file_counts.completed == 3, batch
    archive = client.vector_stores.create(name="archive", extra_body={"engine": "lancedb"})
    added = client.vector_stores.files.create_and_poll(
        vector_store_id=archive.id,
        file_id=uploaded["archive.txt"].id,
        attributes={"kind": "secret", "year": 2024},
        chunking_strategy=STATIC,  # type: ignore[arg-type]
        poll_interval_ms=200,
    )
    assert added.status == "completed", added
    return {"town": town.id, "archive": archive.id}


def _tool(*store_ids: str, **more: Any) -> Any:
    return {"type": "file_search", "vector_store_ids": list(store_ids), **more}


def test_file_search_answers_from_the_documents_with_results_and_citations(
    client: OpenAI, stores: dict[str, str], uploaded: dict[str, Any]
) -> None:
    keeper = uploaded["keeper.md"]
    out = client.responses.create(
        model=MODEL,
        input=KEEPER_Q,
        tools=[_tool(stores["town"], max_num_results=1, ranking_options={"score_threshold": 0.2})],
        include=["file_search_call.results"],
        max_output_tokens=48,
        temperature=0,
    )
    assert out.status in ("completed", "incomplete") and [o.type for o in out.output] == [
        "file_search_call",
        "message",
    ]
    call = out.output[0]
    assert isinstance(call, ResponseFileSearchToolCall)
    assert call.id.startswith("fs_") and call.status == "completed" and call.queries == [KEEPER_Q]
    assert call.results is not None and len(call.results) == 1
    top = call.results[0]
    assert (top.file_id, top.filename) == (keeper.id, "keeper.md")
    assert top.text is not None and "Orsolya" in top.text
    assert top.score is not None and 0.2 <= top.score <= 1 and top.attributes == {}
    message = out.output[1]
    assert isinstance(message, ResponseOutputMessage)
    annotations = message.content[0].annotations  # type: ignore[union-attr]
    assert [(a.type, a.file_id, a.filename, a.index) for a in annotations] == [  # type: ignore[union-attr]
        ("file_citation", keeper.id, "keeper.md", 0)
    ]
    assert "Orsolya" in out.output_text, out.output_text  # the model read the chunk
    assert out.tools[0].type == "file_search" and out.tools[0].vector_store_ids == [stores["town"]]  # type: ignore[union-attr]
    assert out.usage is not None and out.usage.input_tokens > 60  # the sources went in

    stored = client.responses.retrieve(out.id)
    assert [o.type for o in stored.output] == ["file_search_call", "message"]
    assert stored.output_text == out.output_text


def test_tool_choice_none_answers_without_searching(client: OpenAI, stores: dict[str, str]) -> None:
    """``tool_choice: "none"`` keeps the tool declared but unused: no search, no sources in the prompt,
    no ``file_search_call`` item, no citations; the tool is still echoed on the response."""
    ask: Any = {
        "model": MODEL,
        "input": KEEPER_Q,
        "tools": [_tool(stores["town"], max_num_results=1)],
        "max_output_tokens": 8,
        "temperature": 0,
    }
    searched = client.responses.create(**ask)
    plain = client.responses.create(**ask, tool_choice="none")
    assert [o.type for o in searched.output] == ["file_search_call", "message"]
    assert [o.type for o in plain.output] == ["message"], plain.output
    message = plain.output[0]
    assert isinstance(message, ResponseOutputMessage)
    assert message.content[0].annotations == []  # type: ignore[union-attr]
    assert plain.tool_choice == "none" and plain.tools[0].type == "file_search"
    assert searched.usage is not None and plain.usage is not None
    # the sources (a 100-token chunk and the instructions around it) went into one prompt only
    assert plain.usage.input_tokens + 60 < searched.usage.input_tokens, (plain.usage, searched.usage)


def test_without_include_the_results_are_null_and_stores_of_both_engines_merge(
    server: ServerProcess, stores: dict[str, str], uploaded: dict[str, Any]
) -> None:
    body = {
        "model": MODEL,
        "input": "What is the password of the Eldmoor archive door?",
        "tools": [_tool(stores["town"], stores["archive"], max_num_results=5)],
        "max_output_tokens": 8,
        "store": False,
        "tool_choice": {"type": "file_search"},
    }
    by_worker: dict[str, dict[str, Any]] = {}
    for _ in range(40):  # new connections until both workers have answered
        raw = httpx.post(
            server.url + "/v1/responses", json=body, headers={"Connection": "close"}, timeout=300
        )
        assert raw.status_code == 200, raw.text
        by_worker[raw.headers["X-Superollama-Worker"]] = raw.json()
        if len(by_worker) == 2:
            break
    assert len(by_worker) == 2, by_worker.keys()
    for out in by_worker.values():
        assert [o["type"] for o in out["output"]] == ["file_search_call", "message"]
        assert out["output"][1]["content"][0]["annotations"][0]["file_id"] == uploaded["archive.txt"].id
    assert out["tool_choice"] == {"type": "file_search"}
    call, message = out["output"]
    assert call["type"] == "file_search_call" and call["results"] is None and call["status"] == "completed"
    cited = [a["file_id"] for a in message["content"][0]["annotations"]]
    assert cited[0] == uploaded["archive.txt"].id  # best first: the LanceDB store's chunk
    assert len(cited) == len(set(cited)) >= 2  # one citation per file, from both stores
    assert [a["index"] for a in message["content"][0]["annotations"]] == list(range(len(cited)))

    only = {**body, "include": ["file_search_call.results"]}
    only["tools"] = [
        _tool(
            stores["town"],
            stores["archive"],
            filters={"type": "and", "filters": [{"type": "eq", "key": "kind", "value": "secret"}]},
        )
    ]
    filtered = httpx.post(server.url + "/v1/responses", json=only, timeout=300).json()
    results = filtered["output"][0]["results"]
    assert results and {r["filename"] for r in results} == {"archive.txt"}
    assert results[0]["attributes"] == {"kind": "secret", "year": 2024} and "heliotrope" in results[0]["text"]


def test_streamed_file_search_events_in_order(
    server: ServerProcess, client: OpenAI, stores: dict[str, str], uploaded: dict[str, Any]
) -> None:
    tool = _tool(stores["town"], max_num_results=1)
    events = list(
        client.responses.create(
            model=MODEL,
            input=KEEPER_Q,
            tools=[tool],
            include=["file_search_call.results"],
            max_output_tokens=24,
            temperature=0,
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    text_deltas = kinds.count("response.output_text.delta")
    assert text_deltas > 0
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.file_search_call.in_progress",
        "response.file_search_call.searching",
        "response.file_search_call.completed",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * text_deltas,
        "response.output_text.annotation.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        kinds[-1],
    ]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added, done = events[2], events[6]
    assert added.item.type == "file_search_call" and added.item.status == "in_progress"  # type: ignore[union-attr]
    assert all(e.item_id == added.item.id and e.output_index == 0 for e in events[3:6])  # type: ignore[union-attr]
    assert isinstance(done.item, ResponseFileSearchToolCall) and done.item.status == "completed"  # type: ignore[union-attr]
    assert done.item.results and done.item.results[0].file_id == uploaded["keeper.md"].id  # type: ignore[union-attr]
    cite = events[9 + text_deltas]
    assert cite.annotation == {  # type: ignore[union-attr]
        "type": "file_citation",
        "index": 0,
        "file_id": uploaded["keeper.md"].id,
        "filename": "keeper.md",
    }
    final = events[-1].response  # type: ignore[union-attr]
    assert [o.type for o in final.output] == ["file_search_call", "message"]
    assert final.output[1].content[0].annotations[0].file_id == uploaded["keeper.md"].id  # type: ignore[union-attr]
    assert "Orsolya" in final.output_text, final.output_text

    # the raw stream: SSE ``event:`` names match, nothing after the last event
    with httpx.stream(
        "POST",
        server.url + "/v1/responses",
        json={"model": MODEL, "input": KEEPER_Q, "tools": [tool], "stream": True, "max_output_tokens": 4},
        timeout=300,
    ) as raw:
        assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
        names = [line[len("event: ") :] for line in raw.iter_lines() if line.startswith("event: ")]
    assert names[2:7] == kinds[2:7]


@pytest.mark.parametrize(
    ("tool", "status", "needle"),
    [
        (_tool("vs_nope"), 404, "vs_nope"),
        (_tool(), 400, "vector_store_ids"),
        ({"type": "file_search"}, 400, "vector_store_ids"),
        ("FILTER", 400, "filters"),
        ("THRESHOLD", 400, "score_threshold"),
        ("MAX", 400, "max_num_results"),
    ],
)
def test_bad_file_search_tools_get_openai_errors(
    server: ServerProcess, stores: dict[str, str], tool: Any, status: int, needle: str
) -> None:
    town = stores["town"]
    tool = (
        {
            "FILTER": _tool(town, filters={"type": "regex", "key": "kind", "value": "s.*"}),
            "THRESHOLD": _tool(town, ranking_options={"score_threshold": 1.5}),
            "MAX": _tool(town, max_num_results=0),
        }.get(tool, tool)
        if isinstance(tool, str)
        else tool
    )
    for stream in (False, True):  # a streamed request fails before its stream opens
        raw = httpx.post(
            server.url + "/v1/responses",
            json={"model": MODEL, "input": "hi", "tools": [tool], "stream": stream},
            timeout=300,
        )
        assert raw.status_code == status, raw.text
        error = raw.json()["error"]
        assert needle in error["message"] and error["type"] == "invalid_request_error"
    no_question = httpx.post(  # nothing to search for: the tool is checked all the same
        server.url + "/v1/responses",
        json={"model": MODEL, "input": [{"role": "assistant", "content": "hi"}], "tools": [tool]},
        timeout=300,
    )
    assert no_question.status_code == status and needle in no_question.json()["error"]["message"]
    two = httpx.post(
        server.url + "/v1/responses",
        json={"model": MODEL, "input": "hi", "tools": [_tool(town), _tool(town)]},
        timeout=300,
    )
    assert two.status_code == 400 and "only one file_search" in two.json()["error"]["message"]


def test_file_search_follows_the_keys_rules_of_vector_stores(server: ServerProcess) -> None:
    """Runs last in this module: once a key exists, /v1 needs one."""
    keys = []
    for name in ("alice", "bob"):
        made = server.cli("keys", "create", "--name", name)
        assert made.returncode == 0, made.stderr
        keys.append(made.stdout.strip())
    alice, bob = (OpenAI(base_url=server.url + "/v1", api_key=k, max_retries=0, timeout=300) for k in keys)
    f = alice.files.create(
        file=("shed.txt", b"Alice keeps her bicycle in the blue shed."), purpose="assistants"
    )
    vs = alice.vector_stores.create(name="alice's")
    done = alice.vector_stores.files.create_and_poll(
        vector_store_id=vs.id, file_id=f.id, poll_interval_ms=200
    )
    assert done.status == "completed"
    ask: Any = {
        "model": MODEL,
        "input": "Where is the bicycle?",
        "tools": [_tool(vs.id)],
        "include": ["file_search_call.results"],
        "max_output_tokens": 4,
    }
    mine = alice.responses.create(**ask)
    call = mine.output[0]
    assert isinstance(call, ResponseFileSearchToolCall) and call.results and call.results[0].file_id == f.id
    with pytest.raises(openai.NotFoundError) as theirs:
        bob.responses.create(**ask)
    assert vs.id in theirs.value.message
    assert json.loads(theirs.value.response.text)["error"]["code"] == "not_found"
