"""Each request as an Opik trace (with one ``llm`` span), through Opik's official Python SDK.

A sink of the telemetry thread: ``client.trace(...)``/``trace.span(...)`` only queue messages; the SDK
batches them (``POST /v1/private/traces/batch`` and ``/spans/batch``) from its own worker threads, and
``close()`` flushes them. Input and output go in only when content capture is on.

``import opik`` is slow (seconds: thousands of pydantic models), so ``OpikExporter.create`` is meant to
run in a thread (``Telemetry.start`` does). Before the first import, the SDK's own error reporting (Sentry)
and usage analytics are switched off unless the environment says otherwise (``OPIK_SENTRY_ENABLE``,
``OPIK_ANALYTICS_ENABLE``): a gateway does not phone home.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from superollama.core import RequestRecord
from superollama.telemetry.tracing import OPERATIONS, PROVIDER

__all__ = ["OpikExporter", "trace_fields"]


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _input(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        return {"prompt": value}
    return {"messages": value}


def _output(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {"output": value}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def trace_fields(r: RequestRecord, *, capture: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keyword arguments of ``Opik.trace`` and of ``Trace.span`` for one request."""
    operation = OPERATIONS.get(r.operation, r.operation)
    name = f"{operation} {r.model}"
    start, end = _time(r.started_at), _time(r.started_at + r.duration)
    metadata = {
        k: v
        for k, v in {
            "request_id": r.request_id,
            "protocol": r.protocol,
            "operation": r.operation,
            "status": r.status,
            "stream": r.stream,
            "version": r.version,
            "instance": r.instance,
            "connection": r.connection,
            "node": r.node,
            "key_prefix": r.key_prefix,
            "latency_ms": _ms(r.duration),
            "ttft_ms": _ms(r.ttft),
            "load_wait_ms": _ms(r.load_wait),
            "cost": r.cost,
        }.items()
        if v is not None
    }
    error_info = None
    if r.error_type is not None or r.status >= 400:
        error_info = {
            "exception_type": r.error_type or f"http_{r.status}",
            "message": r.error or "",
            "traceback": "",
        }
    trace: dict[str, Any] = {
        "name": name,
        "start_time": start,
        "end_time": end,
        "metadata": metadata,
        "tags": [r.protocol, operation],
        "error_info": error_info,
    }
    span: dict[str, Any] = {
        "name": name,
        "type": "llm",
        "start_time": start,
        "end_time": end,
        "model": r.version or r.model,
        "provider": r.connection or PROVIDER,
        "metadata": {"status": r.status, "ttft_ms": _ms(r.ttft)},
        "error_info": error_info,
    }
    if capture and r.input is not None:
        trace["input"] = span["input"] = _input(r.input)
    if capture and r.output is not None:
        trace["output"] = span["output"] = _output(r.output)
    if r.prompt_tokens is not None or r.completion_tokens is not None:
        prompt, completion = r.prompt_tokens or 0, r.completion_tokens or 0
        # OpenAI-style keys: what Opik's UI reads.
        span["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    if r.cost is not None:
        span["total_cost"] = r.cost
    return trace, span


class OpikExporter:
    """A telemetry-thread sink logging each record as an Opik trace. Build it with ``create``."""

    def __init__(self, client: Any, *, capture: bool = False) -> None:
        self._client = client
        self._capture = capture

    @classmethod
    def create(
        cls,
        *,
        project: str | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        url: str | None = None,
        capture: bool = False,
    ) -> OpikExporter:
        """Import the SDK and build its client (slow the first time: call it in a thread)."""
        os.environ.setdefault("OPIK_SENTRY_ENABLE", "false")
        os.environ.setdefault("OPIK_ANALYTICS_ENABLE", "false")
        import opik

        client = opik.Opik(
            project_name=project,
            workspace=workspace,
            host=url,
            api_key=api_key,
            _show_misconfiguration_message=False,
        )
        return cls(client, capture=capture)

    def __call__(self, r: RequestRecord) -> None:
        trace_kwargs, span_kwargs = trace_fields(r, capture=self._capture)
        trace = self._client.trace(**trace_kwargs)
        trace.span(**span_kwargs)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Send what the SDK has queued (blocking)."""
        return bool(self._client.flush(timeout=int(max(1, timeout_s))))

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush and release the SDK's client (blocking: call it in a thread)."""
        self._client.end(timeout=int(max(1, timeout_s)))
