"""Access log: one JSON line per request with the right fields, no key material, content only on capture;
the process-wide logging setup (JSON or plain, through the writer thread)."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime

import orjson
import pytest

from superollama.core import RequestRecord
from superollama.settings import Settings
from superollama.telemetry import ACCESS_LOGGER, AccessLog, Telemetry, configure_logging
from superollama.telemetry._sink import SinkThread
from superollama.telemetry.access_log import JsonFormatter, access_fields

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SECRET = "so-ab12cd34" + "Zx9" * 14  # a whole key: it must never reach a log line


def rec(**changes: object) -> RequestRecord:
    base = RequestRecord(
        request_id="req-1",
        protocol="openai",
        operation="chat",
        model="smollm2:135m",
        status=200,
        started_at=T0,
        duration=1.25,
        key_id="k_1",
        key_prefix="so-ab12cd34",
        version="smollm2:135m",
        instance="i-1",
        node="local",
        ttft=0.125,
        prompt_tokens=12,
        completion_tokens=34,
        input=[{"role": "user", "content": "the secret prompt"}],
        output="the secret answer",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def access() -> Iterator[tuple[logging.Logger, Lines]]:
    logger = logging.getLogger(ACCESS_LOGGER)
    saved = logger.propagate, logger.level
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = Lines()
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)
    logger.propagate, logger.level = saved


def test_access_line_fields(access: tuple[logging.Logger, Lines]) -> None:
    logger, out = access
    AccessLog(logger=logger)(rec())
    (line,) = out.lines
    assert "\n" not in line
    data = orjson.loads(line)
    assert data == {
        "time": "2026-01-01T00:00:01.250+00:00",  # when the request ended
        "level": "INFO",
        "logger": ACCESS_LOGGER,
        "request_id": "req-1",
        "protocol": "openai",
        "operation": "chat",
        "model": "smollm2:135m",
        "version": "smollm2:135m",
        "instance": "i-1",
        "node": "local",
        "key_id": "k_1",
        "key_prefix": "so-ab12cd34",
        "status": 200,
        "stream": False,
        "latency_ms": 1250.0,
        "ttft_ms": 125.0,
        "prompt_tokens": 12,
        "completion_tokens": 34,
    }
    assert "secret" not in line and SECRET not in line


def test_content_only_with_capture(access: tuple[logging.Logger, Lines]) -> None:
    logger, out = access
    AccessLog(logger=logger, capture=True)(rec())
    AccessLog(logger=logger, capture=True)(rec(input=None, output=None))
    with_content, without = (orjson.loads(line) for line in out.lines)
    assert with_content["input"] == [{"role": "user", "content": "the secret prompt"}]
    assert with_content["output"] == "the secret answer"
    assert "input" not in without and "output" not in without


def test_errors_and_connection_fields(access: tuple[logging.Logger, Lines]) -> None:
    logger, out = access
    AccessLog(logger=logger)(
        rec(status=502, error_type="upstream_error", error="backend died", instance=None, connection="remote")
    )
    data = orjson.loads(out.lines[0])
    assert (data["status"], data["error_type"], data["error"]) == (502, "upstream_error", "backend died")
    assert data["connection"] == "remote" and "instance" not in data


async def test_telemetry_writes_access_lines_off_the_loop_and_strips_content(
    access: tuple[logging.Logger, Lines],
) -> None:
    _, out = access
    telemetry = Telemetry(Settings(capture_content=False))
    await telemetry.start()
    for i in range(20):
        telemetry.record(rec(request_id=f"r{i}"))
    await telemetry.close()
    assert [orjson.loads(line)["request_id"] for line in out.lines] == [f"r{i}" for i in range(20)]
    assert all("secret" not in line for line in out.lines)  # capture is off: the record is stripped


def test_configure_logging_json_and_plain() -> None:
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handle = configure_logging(Settings(log_json=True, log_level="DEBUG"), stream=stream)
    try:
        logging.getLogger("superollama.test").info("hello %s", "world")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("superollama.test").exception("failed")
        AccessLog()(rec())
    finally:
        handle.close()
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["message"] == "hello world" and lines[0]["level"] == "INFO"
    assert lines[1]["message"] == "failed" and "RuntimeError: boom" in lines[1]["exc"]
    assert lines[2]["logger"] == ACCESS_LOGGER and lines[2]["request_id"] == "req-1"
    assert datetime.fromisoformat(lines[0]["time"]).tzinfo == UTC

    stream = io.StringIO()
    handle = configure_logging(Settings(log_json=False), stream=stream)
    try:
        logging.getLogger("superollama.test").warning("plain %d", 1)
        AccessLog()(rec())
    finally:
        handle.close()
        root.setLevel(level)
    first, second = stream.getvalue().splitlines()
    assert first.endswith("WARNING superollama.test: plain 1")
    assert orjson.loads(second.split(f"{ACCESS_LOGGER}: ", 1)[1])["request_id"] == "req-1"
    assert not [h for h in root.handlers if hasattr(h, "superollama_handle")]


def test_log_lines_never_carry_the_secrets_of_a_url() -> None:
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handle = configure_logging(Settings(log_json=False), stream=stream)
    try:
        url = "http://bob:TOPSECRETPW@127.0.0.1:9/v1?api-key=K3Y&v=1"
        logging.getLogger("superollama.test").warning("GET %s failed", url)
        try:
            raise ValueError(f"bad answer from {url}")
        except ValueError:
            logging.getLogger("superollama.test").exception("refresh failed")
    finally:
        handle.close()
        root.setLevel(level)
    out = stream.getvalue()
    assert "GET http://***@127.0.0.1:9/v1?api-key=***&v=1 failed" in out
    assert "ValueError: bad answer from http://***@" in out
    assert "TOPSECRETPW" not in out and "K3Y" not in out


def _written(
    json_lines: bool, write: Callable[[AccessLog], None], log: Callable[[], AccessLog] = AccessLog
) -> tuple[list[str], int]:
    """What ``write`` puts out through ``configure_logging``'s writer, and how many items it queued."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handle = configure_logging(Settings(log_json=json_lines), stream=stream)
    queued = 0
    put = handle.handler.queue.put_nowait

    def counting(item: object) -> None:
        nonlocal queued
        queued += item is not None  # None: the writer's stop
        put(item)  # type: ignore[arg-type]

    handle.handler.queue.put_nowait = counting  # type: ignore[method-assign]
    others = [h for h in root.handlers if h is not handle.handler]  # pytest's capture: not in a server
    for other in others:
        root.removeHandler(other)
    try:
        write(log())
    finally:
        handle.close()
        root.setLevel(level)
        for other in others:
            root.addHandler(other)
    return stream.getvalue().splitlines(), queued


@pytest.mark.parametrize("capture", [False, True], ids=["plain-fields", "capture-and-trace"])
@pytest.mark.parametrize("json_lines", [True, False], ids=["json", "plain"])
def test_a_batch_goes_to_the_writer_as_one_item_and_writes_the_same_lines(
    json_lines: bool, capture: bool
) -> None:
    records = [
        rec(
            request_id=f"r{i}",
            duration=0.001 * i,
            ttft=None if i % 3 else 0.0005 * i,
            error=f"e{i}" * (i % 2),
        )
        for i in range(50)
    ]
    records.append(rec(request_id="odd", cost=0.25, usage_estimated=True, load_wait=0.5, input={"x": {1, 2}}))

    def log() -> AccessLog:  # with capture: the captured content and a trace id on every line
        return AccessLog(capture=capture, trace_id=(lambda rid: "t-" + rid) if capture else None)

    one_by_one, items = _written(json_lines, lambda log: [log(r) for r in records], log)
    assert len(one_by_one) == 51 and items == 51
    batched, items = _written(json_lines, lambda log: log.many(records), log)
    assert items == 1  # not a hand-over per line
    assert batched == one_by_one
    if json_lines:  # each line is the line a full encoding of the whole object makes
        for line, record in zip(batched, records, strict=True):
            created = record.started_at + record.duration
            head = {
                "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
                "level": "INFO",
                "logger": ACCESS_LOGGER,
            }
            trace = "t-" + record.request_id if capture else None
            fields = access_fields(record, capture=capture, trace_id=trace)
            assert line == orjson.dumps({**head, **fields}, default=str).decode()
            assert ("input" in fields) is capture and ("trace_id" in fields) is capture


def test_access_fields_leave_out_what_is_none_and_keep_the_order() -> None:
    full = access_fields(
        rec(
            load_wait=0.002,
            usage_estimated=True,
            search_units=1,
            cost=0.5,
            error_type="x",
            error="y",
            client="c",
            user_agent="u",
        ),
        capture=True,
        trace_id="t",
    )
    assert list(full) == [
        "request_id", "trace_id", "protocol", "operation", "model", "version", "instance", "node", "key_id",
        "key_prefix", "status", "stream", "latency_ms", "ttft_ms", "load_wait_ms", "prompt_tokens",
        "completion_tokens", "usage_estimated", "search_units", "cost", "error_type", "error", "client",
        "user_agent", "input", "output",
    ]  # fmt: skip
    assert full["latency_ms"] == 1250.0 and full["ttft_ms"] == 125.0 and full["load_wait_ms"] == 2.0
    bare = access_fields(
        RequestRecord(request_id="r", protocol="p", operation="o", model="m", status=500, started_at=T0,
                      duration=0.0012345)
    )  # fmt: skip
    assert bare == {
        "request_id": "r", "protocol": "p", "operation": "o", "model": "m", "status": 500, "stream": False,
        "latency_ms": 1.234,
    }  # fmt: skip
    assert "input" not in access_fields(rec(), capture=False)


def test_a_full_queue_drops_a_batch_of_text_lines_and_counts_each() -> None:
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handle = configure_logging(Settings(log_json=True), stream=stream, queue_size=1)
    others = [h for h in root.handlers if h is not handle.handler]
    for other in others:
        root.removeHandler(other)
    handle.listener.stop()  # nothing takes from the queue: the second batch finds it full
    try:
        AccessLog().many([rec(request_id="a")])
        AccessLog().many([rec(request_id=f"b{i}") for i in range(7)])
        assert handle.dropped == 7
    finally:
        handle.handler.queue.get_nowait()  # the first batch: now the writer can start again and stop
        handle.listener.start()
        handle.close()
        root.setLevel(level)
        for other in others:
            root.addHandler(other)


def test_a_batch_goes_through_logging_line_by_line_to_any_other_handler(
    access: tuple[logging.Logger, Lines],
) -> None:
    logger, out = access
    AccessLog(logger=logger).many([rec(request_id=f"r{i}") for i in range(3)])
    assert [orjson.loads(line)["request_id"] for line in out.lines] == ["r0", "r1", "r2"]
    logger.setLevel(logging.WARNING)
    AccessLog(logger=logger).many([rec(request_id="below the level")])
    assert len(out.lines) == 3


def test_the_sink_thread_hands_batches_to_sinks_that_take_them_and_survives_a_failing_one() -> None:
    class Batches:
        def __init__(self) -> None:
            self.batches: list[list[str]] = []

        def __call__(self, record: RequestRecord) -> None:
            raise AssertionError("a batch sink is not called record by record")

        def many(self, records: Sequence[RequestRecord]) -> None:
            self.batches.append([r.request_id for r in records])

    class Broken(Batches):
        def many(self, records: Sequence[RequestRecord]) -> None:
            raise RuntimeError("broken sink")

    each: list[str] = []
    batches = Batches()
    thread = SinkThread([Broken(), batches, lambda r: each.append(r.request_id)])
    thread.start()
    for i in range(5):
        thread.put(rec(request_id=f"r{i}"))  # no loop running: handed over one by one
    assert thread.flush(10)
    thread.close(10)
    names = [f"r{i}" for i in range(5)]
    assert each == names and [n for batch in batches.batches for n in batch] == names
    assert thread.failures == 5  # the broken sink, once per batch; the others got everything
