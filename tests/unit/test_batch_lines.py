"""A batch input file read line by line (what an upload refuses, naming the lines, and what a batch
reads), and a batch shown as OpenAI's ``Batch`` object."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from superollama.control.batch_files import batch_json, check_batch_jsonl, parse_batch_jsonl
from superollama.errors import InvalidRequest
from superollama.registry._batches import BatchRecord


def line(custom_id: str = "a", **changes: Any) -> str:
    item = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "m", "input": "x"},
    }
    item.update(changes)
    return json.dumps(item)


def test_good_lines_are_read_in_order_with_their_line_numbers() -> None:
    data = (line("a") + "\n\n" + line("b", url="/v1/chat/completions") + "\n").encode("utf-8-sig")
    lines, problems = parse_batch_jsonl(data)
    assert problems == []
    assert [(ln.line, ln.custom_id, ln.url) for ln in lines] == [
        (1, "a", "/v1/embeddings"),
        (3, "b", "/v1/chat/completions"),
    ]
    assert lines[0].body == {"model": "m", "input": "x"}
    assert check_batch_jsonl(data) == 2


@pytest.mark.parametrize(
    ("text", "code", "said"),
    [
        ("[1]", "invalid_json_line", "must be a JSON object"),
        ('{"custom_id": ', "invalid_json_line", "not valid JSON"),
        (line(custom_id=""), "missing_required_parameter", "non-empty string custom_id"),
        (line(method="GET"), "invalid_method", "method must be POST (got 'GET')"),
        (line(url="/v1/images/generations"), "invalid_url", "url must be one of"),
        (line(body=[]), "missing_required_parameter", "needs a body object"),
        (line(body={"input": "x"}), "missing_required_parameter", "body needs a model"),
        (line(body={"model": "m", "stream": True}), "invalid_request", "streaming is not available"),
    ],
)
def test_each_bad_line_is_named_with_its_problem(text: str, code: str, said: str) -> None:
    _, problems = parse_batch_jsonl((line("ok") + "\n" + text + "\n").encode())
    [problem] = problems
    assert (problem.line, problem.code) == (2, code) and said in problem.message
    with pytest.raises(InvalidRequest, match=re.escape("in.jsonl is not a valid batch input file: line 2: ")):
        check_batch_jsonl((line("ok") + "\n" + text).encode(), "in.jsonl")


def test_duplicates_the_endpoint_and_empty_files() -> None:
    _, problems = parse_batch_jsonl((line("a") + "\n" + line("a")).encode())
    assert [(p.line, p.code, p.message) for p in problems] == [
        (2, "duplicate_custom_id", "custom_id 'a' is already used on line 1")
    ]
    _, problems = parse_batch_jsonl(line("a").encode(), "/v1/chat/completions")
    assert [(p.line, p.code, p.param) for p in problems] == [(1, "mismatched_endpoint", "url")]
    _, problems = parse_batch_jsonl(b"\n \n")
    assert [p.code for p in problems] == ["empty_file"]
    _, problems = parse_batch_jsonl(b"\xff\xfe{")
    assert [p.code for p in problems] == ["invalid_file"]


def test_an_upload_error_names_five_lines_and_counts_the_rest() -> None:
    data = "\n".join(line(f"c{i}", method="GET") for i in range(8)).encode()
    with pytest.raises(InvalidRequest) as caught:
        check_batch_jsonl(data, "f.jsonl")
    message = caught.value.message
    assert "line 5:" in message and "line 6:" not in message and message.endswith("(and 3 more)")
    assert caught.value.param == "file"


def test_a_batch_is_shown_as_openai_s_batch_object() -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    shown = batch_json(
        BatchRecord(
            id="batch_1",
            endpoint="/v1/embeddings",
            input_file_id="file-1",
            expires_at=created + timedelta(hours=24),
            status="failed",
            errors=({"code": "invalid_url", "message": "m", "param": "url", "line": 3},),
            total=0,
            created_at=created,
            failed_at=created + timedelta(seconds=2),
        )
    )
    assert shown["object"] == "batch" and shown["status"] == "failed"
    assert shown["errors"] == {
        "object": "list",
        "data": [{"code": "invalid_url", "message": "m", "param": "url", "line": 3}],
    }
    assert (
        shown["expires_at"] - shown["created_at"] == 86400 and shown["failed_at"] == shown["created_at"] + 2
    )
    assert shown["in_progress_at"] is None and shown["output_file_id"] is None
    assert shown["request_counts"] == {"total": 0, "completed": 0, "failed": 0} and shown["metadata"] == {}
