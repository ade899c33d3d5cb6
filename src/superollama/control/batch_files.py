"""A batch's files: the input JSONL (one request per line, every problem named by line) and the shapes the
API answers with (OpenAI's ``Batch`` object and the output and error files' lines).

Kept apart from the runner (``control/batches.py``) because the files API checks an upload with the same
parser before any batch exists (``plugins/rag/files.py``).
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from superollama.errors import InvalidRequest
from superollama.registry._batches import BatchRecord, BatchRequestRecord

__all__ = [
    "ENDPOINTS",
    "MAX_REQUESTS",
    "BatchLine",
    "Problem",
    "batch_json",
    "check_batch_jsonl",
    "output_line",
    "parse_batch_jsonl",
    "said",
]

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses")
MAX_REQUESTS = 50_000
_MAX_SHOWN = 5  # problems named in one upload error


@dataclass(frozen=True, slots=True)
class BatchLine:
    line: int  # 1-based, as an editor counts (blank lines count too)
    custom_id: str
    url: str
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Problem:
    line: int | None
    code: str
    message: str
    param: str | None = None


# -- the input file ---------------------------------------------------------------------------------------
def parse_batch_jsonl(
    data: bytes, endpoint: str | None = None
) -> tuple[builtins.list[BatchLine], builtins.list[Problem]]:
    """The requests of a batch input file and the problems found (every one, in line order). With
    ``endpoint``, each request's ``url`` must be it."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [Problem(None, "invalid_file", f"not UTF-8 text (byte {exc.start})")]
    lines: list[BatchLine] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        parsed = _line(number, raw, endpoint)
        if isinstance(parsed, Problem):
            problems.append(parsed)
            continue
        if parsed.custom_id in seen:
            problems.append(
                Problem(
                    number,
                    "duplicate_custom_id",
                    f"custom_id {parsed.custom_id!r} is already used on line {seen[parsed.custom_id]}",
                    "custom_id",
                )
            )
            continue
        seen[parsed.custom_id] = number
        lines.append(parsed)
    if not lines and not problems:
        problems.append(Problem(None, "empty_file", "the file has no requests (one JSON object per line)"))
    if len(lines) > MAX_REQUESTS:
        problems.append(Problem(None, "too_many_requests", f"a batch holds at most {MAX_REQUESTS} requests"))
    return lines, problems


def _line(number: int, raw: str, endpoint: str | None) -> BatchLine | Problem:
    try:
        item = json.loads(raw)
    except json.JSONDecodeError as exc:
        return Problem(number, "invalid_json_line", f"not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(item, dict):
        return Problem(number, "invalid_json_line", "must be a JSON object")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return Problem(
            number, "missing_required_parameter", "needs a non-empty string custom_id", "custom_id"
        )
    if item.get("method") != "POST":
        return Problem(
            number, "invalid_method", f"method must be POST (got {item.get('method')!r})", "method"
        )
    url = item.get("url")
    if url not in ENDPOINTS:
        return Problem(
            number, "invalid_url", f"url must be one of {', '.join(ENDPOINTS)} (got {url!r})", "url"
        )
    if endpoint is not None and url != endpoint:
        return Problem(
            number, "mismatched_endpoint", f"url {url} is not the batch's endpoint {endpoint}", "url"
        )
    body = item.get("body")
    if not isinstance(body, dict):
        return Problem(number, "missing_required_parameter", "needs a body object", "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return Problem(number, "missing_required_parameter", "body needs a model", "body.model")
    if body.get("stream"):
        return Problem(number, "invalid_request", "streaming is not available in a batch", "body.stream")
    return BatchLine(number, custom_id, str(url), body)


def check_batch_jsonl(data: bytes, filename: str = "file") -> int:
    """The number of requests in a batch input file; ``InvalidRequest`` naming each bad line (up to 5)."""
    lines, problems = parse_batch_jsonl(data)
    if problems:
        shown = "; ".join(said(p) for p in problems[:_MAX_SHOWN])
        more = f" (and {len(problems) - _MAX_SHOWN} more)" if len(problems) > _MAX_SHOWN else ""
        raise InvalidRequest(f"{filename} is not a valid batch input file: {shown}{more}", param="file")
    return len(lines)


def said(p: Problem) -> str:
    return f"line {p.line}: {p.message}" if p.line is not None else p.message


# -- the API's shapes --------------------------------------------------------------------------------------
def _ts(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None


def batch_json(b: BatchRecord) -> dict[str, Any]:
    """A batch as OpenAI's ``Batch`` object."""
    return {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "errors": None if b.errors is None else {"object": "list", "data": [dict(e) for e in b.errors]},
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": _ts(b.created_at) or 0,
        "in_progress_at": _ts(b.in_progress_at),
        "expires_at": _ts(b.expires_at),
        "finalizing_at": _ts(b.finalizing_at),
        "completed_at": _ts(b.completed_at),
        "failed_at": _ts(b.failed_at),
        "expired_at": _ts(b.expired_at),
        "cancelling_at": _ts(b.cancelling_at),
        "cancelled_at": _ts(b.cancelled_at),
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "metadata": dict(b.metadata),
        "usage": {
            "input_tokens": b.input_tokens,
            "output_tokens": b.output_tokens,
            "total_tokens": b.input_tokens + b.output_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def output_line(batch: BatchRecord, r: BatchRequestRecord) -> bytes:
    response = None
    if r.status_code is not None:
        response = {"status_code": r.status_code, "request_id": r.request_id, "body": r.response}
    return orjson.dumps(
        {
            "id": f"batch_req_{batch.id.removeprefix('batch_')}{r.line:06d}",
            "custom_id": r.custom_id,
            "response": response,
            "error": None if r.error is None else dict(r.error),
        }
    )
