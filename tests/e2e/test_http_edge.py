"""The HTTP edge of a real ``superollama serve`` (one worker and ``--workers 2``), probed with raw sockets:
header, body and idle timeouts, the connection cap, malformed requests, early 413, and the range checks of
numeric fields. The settings are made small so each bound is reached in a second or two; every wait is a
condition with a deadline (a socket read with a timeout), never a sleep.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from tests.e2e.conftest import ServerProcess, wait_until
from tests.e2e.standins import StandIn

SHORT = "1.5"  # seconds: header, body and idle timeouts of the servers that test them
SLACK = 15.0  # seconds past a timeout within which the connection must be closed (a busy 2-core machine)
WORKER = "x-superollama-worker"


def _start(home: Path, workers: int, **env: str) -> ServerProcess:
    return ServerProcess(
        home,
        SUPEROLLAMA_WORKERS=str(workers),
        SUPEROLLAMA_BUNDLED_MODEL="false",
        SUPEROLLAMA_MAX_BODY_BYTES=str(1024 * 1024),
        **env,
    ).start(timeout=120)


def _timeouts(**env: str) -> dict[str, str]:
    return {
        "SUPEROLLAMA_HTTP_HEADER_TIMEOUT": SHORT,
        "SUPEROLLAMA_HTTP_BODY_TIMEOUT": SHORT,
        "SUPEROLLAMA_HTTP_IDLE_TIMEOUT": SHORT,
        **env,
    }


@pytest.fixture(scope="module", params=[1, 2], ids=["one-worker", "two-workers"])
def timed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server whose header, body and idle timeouts are 1.5 s."""
    server = _start(tmp_path_factory.mktemp("timed"), request.param, **_timeouts())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One worker, 1.5 s timeouts, the OpenAI stand-in connected as ``echo`` (model ``echo/echo-1``)."""
    stand_in = StandIn().start()
    server = _start(tmp_path_factory.mktemp("single"), 1, **_timeouts())
    try:
        done = server.cli("connect", "openai", f"http://127.0.0.1:{stand_in.port}/v1", "--name", "echo")
        assert done.returncode == 0, done.stderr
        server.stand_in = stand_in  # type: ignore[attr-defined]
        yield server
    finally:
        server.stop()
        stand_in.stop()


# -- raw HTTP/1.1 over a socket -----------------------------------------------------------------------
def _connect(server: ServerProcess, timeout: float = 30.0) -> socket.socket:
    url = urlsplit(server.url)
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=timeout)
    sock.settimeout(timeout)
    return sock


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def _read_answer(sock: socket.socket) -> Answer:
    """One response (with a Content-Length body) read from ``sock``, within the socket's timeout."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return Answer(status, headers, rest[:length])


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True once the server closes ``sock`` (EOF or reset), reading and dropping anything it sends."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def _get(sock: socket.socket, path: str = "/health") -> Answer:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return _read_answer(sock)


def _log_after(server: ServerProcess, offset: int) -> str:
    return server.log.read_bytes()[offset:].decode(errors="replace")


# -- timeouts -------------------------------------------------------------------------------------------
def test_a_head_that_never_ends_is_answered_408_and_closed(timed: ServerProcess) -> None:
    """A slowloris: a header line every 0.3 s, never the blank line. The header timeout runs from the
    first byte, so trickling does not keep the connection (aiohttp's idle timer alone never closed it)."""
    socks = [_connect(timed) for _ in range(4)]  # several, so that with two workers both get some
    for sock in socks:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n")
    deadline = time.monotonic() + float(SHORT) + SLACK
    answers: dict[int, bytes] = {}
    while len(answers) < len(socks) and time.monotonic() < deadline:
        for i, sock in enumerate(socks):
            if i in answers:
                continue
            try:
                sock.sendall(b"X-Trickle: 1\r\n")
                sock.settimeout(0.3 / len(socks))
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            answers[i] = data
    assert len(answers) == len(socks), "a connection still open past the header timeout"
    for data in answers.values():
        if data:  # the 408 (a reset can beat it on a busy machine: the client kept sending)
            assert data.startswith(b"HTTP/1.1 408"), data
            assert json.loads(data.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
    for sock in socks:
        sock.close()


def test_a_connection_that_sends_nothing_is_closed(timed: ServerProcess) -> None:
    sock = _connect(timed)
    assert _closed_within(sock, float(SHORT) + SLACK)
    sock.close()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_a_stalled_body_is_answered_408_in_the_client_protocol_and_closed(
    timed: ServerProcess, path: str
) -> None:
    sock = _connect(timed, timeout=float(SHORT) + SLACK)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"model": "x", ')  # 15 of the 100 bytes, then nothing
    answer = _read_answer(sock)
    assert answer.status == 408
    error = answer.json()["error"]
    if path.startswith("/api/"):
        assert isinstance(error, str) and "stalled" in error
    else:
        assert error["code"] == "request_timeout"
    assert _closed_within(sock, SLACK)
    sock.close()


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(timed: ServerProcess) -> None:
    seen: set[str] = set()
    socks = []
    for _ in range(40):  # until both workers hold one (with two workers: SO_REUSEPORT spreads them)
        sock = _connect(timed)
        answer = _get(sock)
        assert answer.status == 200 and answer.headers.get("connection", "").lower() != "close"
        socks.append(sock)
        seen.add(answer.headers.get(WORKER, "0"))
        if len(seen) == (2 if WORKER in answer.headers else 1):
            break
    for sock in socks:
        assert _closed_within(sock, float(SHORT) + SLACK)
        sock.close()


def test_a_slow_but_steady_body_and_a_busy_connection_are_not_cut(single: ServerProcess) -> None:
    """The body timeout is the silence between two reads, not the whole body; the header timeout runs per
    request: a connection that keeps working for longer than both is never closed."""
    sock = _connect(single)
    body = json.dumps({"model": "echo/echo-1", "messages": MESSAGES}).encode()
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    sock.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode())
    pieces = [body[i : i + 4] for i in range(0, len(body), 4)]
    started = time.monotonic()
    for piece in pieces:  # about 3 s in all, twice the body timeout, never silent for 0.5 s
        sock.sendall(piece)
        time.sleep(3.0 / len(pieces))  # pacing the upload: time itself is under test
    assert time.monotonic() - started > float(SHORT)
    assert _read_answer(sock).status == 200
    started = time.monotonic()
    while time.monotonic() - started < 2 * float(SHORT):  # keep-alive requests for twice the timeouts
        assert _get(sock).status == 200
        time.sleep(0.3)  # pacing: shorter than the idle timeout
    sock.close()


# -- malformed and oversized requests ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: test\r\nBad\x01Header: y\r\n\r\n",
    ],
    ids=["garbage-line", "bad-version", "bad-header-bytes"],
)
def test_a_malformed_request_gets_a_json_400_and_one_warning_line(single: ServerProcess, raw: bytes) -> None:
    offset = single.log.stat().st_size
    sock = _connect(single)
    sock.sendall(raw)
    answer = _read_answer(sock)
    assert answer.status == 400
    assert answer.headers["content-type"].startswith("application/json")
    assert "malformed HTTP request" in answer.json()["error"]["message"]
    assert _closed_within(sock, SLACK)
    sock.close()
    assert wait_until(lambda: "malformed request" in _log_after(single, offset), timeout=10)
    new = _log_after(single, offset)
    assert "Traceback" not in new
    lines = [line for line in new.splitlines() if "malformed request" in line]
    assert len(lines) == 1 and " WARNING " in lines[0], new


def test_a_header_over_the_limit_gets_a_json_431(single: ServerProcess) -> None:
    offset = single.log.stat().st_size
    sock = _connect(single)
    sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    answer = _read_answer(sock)
    assert answer.status == 431
    assert answer.json()["error"]["code"] == "request_header_fields_too_large"
    sock.close()
    assert wait_until(lambda: "malformed request" in _log_after(single, offset), timeout=10)
    assert "Traceback" not in _log_after(single, offset)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_a_declared_length_over_the_limit_is_refused_before_the_body(
    single: ServerProcess, path: str
) -> None:
    sock = _connect(single, timeout=10)
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    sock.sendall(head.encode() + b"Content-Length: 1000000000000000000\r\n\r\n{}")
    answer = _read_answer(sock)  # before the fix: no answer, the socket times out
    assert answer.status == 413
    assert answer.headers["connection"].lower() == "close"
    error = answer.json()["error"]
    message = error if path.startswith("/api/") else error["message"]
    assert "1000000000000000000" in message and str(1024 * 1024) in message
    assert _closed_within(sock, SLACK)
    sock.close()


def test_a_chunked_body_over_the_limit_gets_413(single: ServerProcess) -> None:
    sock = _connect(single, timeout=30)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"a" * 65536
    sock.sendall(head)
    try:
        for _ in range(1024 * 1024 // len(chunk) + 2):
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
    except (ConnectionResetError, BrokenPipeError):
        pass  # refused while sending: the answer is already waiting
    assert _read_answer(sock).status == 413
    sock.close()


# -- numbers ----------------------------------------------------------------------------------------------
BAD_TOKENS: list[Any] = [4294967297, 10**12, -1, 0, True, 1.5, "5"]
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("value", BAD_TOKENS, ids=repr)
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/chat/completions", {"messages": MESSAGES}, "max_tokens"),
        ("/v1/chat/completions", {"messages": MESSAGES}, "max_completion_tokens"),
        ("/v1/completions", {"prompt": "hi"}, "max_tokens"),
    ],
)
def test_an_out_of_range_openai_integer_is_a_400_naming_the_field(
    single: ServerProcess, path: str, body: dict[str, Any], field: str, value: Any
) -> None:
    calls = len(single.stand_in.auth)  # type: ignore[attr-defined]
    resp = httpx.post(single.url + path, json={"model": "echo/echo-1", **body, field: value}, timeout=30)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == field
    assert error["type"] == "invalid_request_error"
    assert error["code"] in ("invalid_type", "integer_below_min_value", "integer_above_max_value")
    assert str(value) in error["message"] or error["code"] == "invalid_type"
    assert "-727379968" not in error["message"] and "-2147483648" not in error["message"]
    assert len(single.stand_in.auth) == calls  # type: ignore[attr-defined]  # never reached the backend


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", 2**63),
        ("temperature", 2.5),
        ("top_p", -0.1),
        ("n", 0),
        ("top_logprobs", 21),
        ("top_k", 2**31),
    ],
)
def test_other_openai_numbers_are_range_checked(single: ServerProcess, field: str, value: Any) -> None:
    body = {"model": "echo/echo-1", "messages": MESSAGES, field: value}
    resp = httpx.post(single.url + "/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == field


@pytest.mark.parametrize("value", [4294967297, 10**12, -3, True, 1.5, "5"], ids=repr)
@pytest.mark.parametrize(
    ("path", "body"), [("/api/chat", {"messages": MESSAGES}), ("/api/generate", {"prompt": "hi"})]
)
def test_an_out_of_range_num_predict_is_a_400_naming_the_option(
    single: ServerProcess, path: str, body: dict[str, Any], value: Any
) -> None:
    calls = len(single.stand_in.auth)  # type: ignore[attr-defined]
    payload = {"model": "echo/echo-1", **body, "stream": False, "options": {"num_predict": value}}
    resp = httpx.post(single.url + path, json=payload, timeout=30)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert isinstance(error, str) and "options.num_predict" in error
    assert len(single.stand_in.auth) == calls  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", [-1, -2, 5])
def test_num_predict_in_range_still_works(single: ServerProcess, value: int) -> None:
    payload = {
        "model": "echo/echo-1",
        "messages": MESSAGES,
        "stream": False,
        "options": {"num_predict": value},
    }
    resp = httpx.post(single.url + "/api/chat", json=payload, timeout=60)
    assert resp.status_code == 200, resp.text


def test_max_tokens_at_the_int32_limit_still_works(single: ServerProcess) -> None:
    body = {"model": "echo/echo-1", "messages": MESSAGES, "max_tokens": 2**31 - 1}
    resp = httpx.post(single.url + "/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text


# -- the connection cap -----------------------------------------------------------------------------------
CAP = 2


@pytest.fixture(scope="module", params=[1, 2], ids=["one-worker", "two-workers"])
def capped(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """At most 2 client connections per worker (timeouts long enough not to interfere)."""
    server = _start(
        tmp_path_factory.mktemp("capped"),
        request.param,
        SUPEROLLAMA_MAX_CONNECTIONS=str(CAP),
        SUPEROLLAMA_HTTP_IDLE_TIMEOUT="60",
        SUPEROLLAMA_HTTP_HEADER_TIMEOUT="60",
    )
    server.workers = request.param  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


def _fill(server: ServerProcess) -> tuple[dict[str, list[socket.socket]], list[Answer]]:
    """Open connections (one ``GET /health`` each, kept alive) until every worker holds ``CAP``; the
    answers of the connections refused on the way are returned too."""
    workers: int = server.workers  # type: ignore[attr-defined]
    held: dict[str, list[socket.socket]] = {}
    refused: list[Answer] = []
    for _ in range(200):
        if len(held) == workers and all(len(s) == CAP for s in held.values()):
            return held, refused
        sock = _connect(server)
        answer = _get(sock)
        if answer.status == 200:
            held.setdefault(answer.headers.get(WORKER, "0"), []).append(sock)
        else:
            refused.append(answer)
            sock.close()
        assert all(len(s) <= CAP for s in held.values()), "a worker took more connections than its cap"
    raise AssertionError(f"workers did not fill up: { ({w: len(s) for w, s in held.items()}) }")


def test_past_the_cap_a_connection_is_refused_503_and_the_held_ones_keep_working(
    capped: ServerProcess,
) -> None:
    held, _ = _fill(capped)
    try:
        for path, ollama in (("/v1/models", False), ("/api/tags", True)):
            sock = _connect(capped, timeout=10)
            answer = _get(sock, path)  # before the fix: a 200, there was no cap
            assert answer.status == 503
            assert answer.headers["retry-after"] == "1"
            assert answer.headers["connection"].lower() == "close"
            error = answer.json()["error"]
            if ollama:
                assert isinstance(error, str) and "connection limit" in error
            else:
                assert error["code"] == "server_busy" and error["type"] == "service_unavailable"
            assert _closed_within(sock, SLACK)
            sock.close()
        for socks in held.values():
            for sock in socks:
                assert _get(sock).status == 200  # the first N still work, on the same connections
        worker, socks = next(iter(held.items()))
        socks.pop().close()  # a free slot on that worker

        def accepted() -> bool:
            sock = _connect(capped, timeout=10)
            try:
                answer = _get(sock)
                if answer.status == 200:
                    assert answer.headers.get(WORKER, "0") == worker
                    socks.append(sock)
                    return True
                return False
            finally:
                if sock not in socks:
                    sock.close()

        assert wait_until(accepted, timeout=30)
    finally:
        for socks in held.values():
            for sock in socks:
                sock.close()


def test_a_refused_connection_that_sends_nothing_is_still_answered(capped: ServerProcess) -> None:
    held, _ = _fill(capped)
    try:
        sock = _connect(capped, timeout=10)
        answer = _read_answer(sock)  # nothing sent: after a short wait the answer comes in OpenAI's shape
        assert answer.status == 503 and answer.json()["error"]["code"] == "server_busy"
        sock.close()
    finally:
        for socks in held.values():
            for s in socks:
                s.close()
