"""The data plane's HTTP/1.1 client against a scripted loopback server that writes exact bytes:
framing (length, chunked, until close, 1xx), keep-alive reuse, the resend on a stale pooled
connection, failures mid-body, timeouts, and closing the connection when the caller leaves early.
(The e2e suites run it against real backends: llama.cpp's server, the transformers worker, vLLM.)"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from superollama.gateway.h1 import ConnectFailed, H1Client, NoAnswer, UpstreamConnectionError

JSON = (("Content-Type", "application/json"),)

# (reader, writer, request bytes) -> None; called once per request the server reads
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


@dataclass
class Server:
    port: int = 0
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # a client connection ended
    script: Script | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            while True:
                try:
                    request = await _read_request(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                state.requests.append(request)
                assert state.script is not None
                await state.script(reader, writer, request)
                if writer.is_closing():
                    break
        finally:
            writer.close()
            state.closed.set()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = srv.sockets[0].getsockname()[1]
    async with srv:
        yield state
        srv.close()


def answer(body: bytes, *, status: str = "200 OK", extra: str = "") -> Script:
    async def script(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _req: bytes) -> None:
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    return script


async def test_a_json_answer_and_the_connection_is_reused(server: Server) -> None:
    server.script = answer(b'{"ok":true}')
    client = H1Client()
    try:
        for _ in range(3):
            async with await client.post(server.url, "/chat/completions", b"{}", JSON, timeout=5) as up:
                assert (up.status, up.content_type) == (200, "application/json")
                assert await up.read() == b'{"ok":true}'
        assert server.connections == 1
        first = server.requests[0]
        assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in first
        assert b"Content-Length: 2\r\n" in first and first.endswith(b"\r\n\r\n{}")
    finally:
        await client.close()


async def test_a_chunked_stream_in_tiny_pieces_with_extensions_and_trailers(server: Server) -> None:
    events = [b'data: {"n":%d}\n\n' % i for i in range(50)] + [b"data: [DONE]\n\n"]

    async def script(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _req: bytes) -> None:
        wire = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        for i, event in enumerate(events):
            wire += b"%x;ext=%d\r\n%s\r\n" % (len(event), i, event)
        wire += b"0\r\nX-Trailer: yes\r\n\r\n"
        for i in range(0, len(wire), 7):  # 7 bytes at a time: every boundary falls mid-token somewhere
            writer.write(wire[i : i + 7])
            await writer.drain()

    server.script = script
    client = H1Client()
    try:
        for _ in range(2):
            async with await client.post(server.url, "/x", b"{}", JSON, timeout=5) as up:
                assert up.content_type == "text/event-stream"
                got = b"".join([piece async for piece in up.iter_any()])
            assert got == b"".join(events)
        assert server.connections == 1  # the chunked answer ended cleanly: the connection was reused
    finally:
        await client.close()


async def test_a_body_framed_by_close_and_an_interim_answer(server: Server) -> None:
    async def script(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _req: bytes) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall ")
        await writer.drain()
        writer.write(b"of it")
        await writer.drain()
        writer.close()

    server.script = script
    client = H1Client()
    try:
        for _ in range(2):
            async with await client.post(server.url, "/x", b"{}", JSON, timeout=5) as up:
                assert up.status == 200
                assert await up.read() == b"all of it"
        assert server.connections == 2  # a close-framed answer cannot be reused
    finally:
        await client.close()


async def test_a_pooled_connection_that_dies_unanswered_is_resent_on_a_new_one(server: Server) -> None:
    """The server takes the second request on the kept-alive connection and drops the connection
    without a byte of answer (what llama.cpp's server does to idle connections): the client sends the
    request again on a new connection and the caller never sees the failure."""
    answered = answer(b'{"ok":1}')

    async def script(r: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> None:
        if server.connections == 1 and len(server.requests) == 2:
            writer.transport.abort()
            return
        await answered(r, writer, req)

    server.script = script
    client = H1Client()
    try:
        for body in (b"1", b"2"):
            async with await client.post(server.url, "/x", body, JSON, timeout=5) as up:
                assert await up.read() == b'{"ok":1}'
        assert server.connections == 2
        assert [r[-1:] for r in server.requests] == [b"1", b"2", b"2"]
    finally:
        await client.close()


async def test_a_backend_that_dies_mid_body_is_an_error(server: Server) -> None:
    async def script(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _req: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    server.script = script
    client = H1Client()
    try:
        async with await client.post(server.url, "/x", b"{}", JSON, timeout=5) as up:
            with pytest.raises(UpstreamConnectionError):
                await up.read()
        async with await client.post(server.url, "/x", b"{}", JSON, timeout=5) as up:
            pieces = []
            with pytest.raises(UpstreamConnectionError):
                async for piece in up.iter_any():
                    pieces.append(piece)
            assert b"".join(pieces) == b"partial"
    finally:
        await client.close()


async def test_timeouts_before_and_during_the_answer(server: Server) -> None:
    async def silent(_r: asyncio.StreamReader, _w: asyncio.StreamWriter, _req: bytes) -> None:
        await asyncio.sleep(3600)  # a backend that never answers: the client's timeout is under test

    server.script = silent
    client = H1Client()
    try:
        with pytest.raises(TimeoutError):
            await client.post(server.url, "/x", b"{}", JSON, timeout=0.2)

        async def slow_body(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _req: bytes) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
            await asyncio.sleep(3600)  # a backend that stalls mid-body: the client's timeout is under test

        server.script = slow_body
        async with await client.post(server.url, "/x", b"{}", JSON, timeout=0.3) as up:
            with pytest.raises(TimeoutError):
                await up.read()
    finally:
        await client.close()


async def test_each_exchange_on_a_kept_connection_times_out_at_its_own_deadline(server: Server) -> None:
    """A kept connection arms one timer and moves it lazily: a later exchange with a shorter timeout
    still ends at its own deadline, and one with a longer timeout is not ended at the deadline of the
    exchange that armed the timer."""
    answers = iter([answer(b"{}"), None, answer(b"{}"), None])

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        nxt = next(answers)
        if nxt is None:  # a backend that stalls: the client's timeout is under test
            await asyncio.sleep(3600)
        else:
            await nxt(reader, writer, request)

    server.script = script
    client = H1Client()
    loop = asyncio.get_running_loop()
    try:
        async with await client.post(server.url, "/x", b"{}", JSON, timeout=60) as up:
            await up.read()  # arms the connection's timer 60 s out
        started = loop.time()
        with pytest.raises(TimeoutError, match=r"within 0\.2s"):
            await client.post(server.url, "/x", b"{}", JSON, timeout=0.2)
        assert loop.time() - started < 30  # its own 0.2 s, not the 60 s the timer was armed for
        assert server.connections == 1

        async with await client.post(server.url, "/x", b"{}", JSON, timeout=0.3) as up:
            await up.read()  # a new connection (the timed-out one was closed): its timer 0.3 s out
        started = loop.time()
        with pytest.raises(TimeoutError, match=r"within 0\.8s"):
            await client.post(server.url, "/x", b"{}", JSON, timeout=0.8)
        assert loop.time() - started > 0.6  # not ended when the first exchange's 0.3 s ran out
        assert server.connections == 2
    finally:
        await client.close()


async def test_leaving_a_stream_early_closes_the_backend_connection(server: Server) -> None:
    async def endless(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _req: bytes) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        try:
            while True:
                writer.write(b"7\r\ndata: x\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)  # a stand-in backend's pace: an endless, steady stream
        except ConnectionError:
            writer.close()

    server.script = endless
    client = H1Client()
    try:
        async with await client.post(server.url, "/x", b"{}", JSON, timeout=5) as up:
            async for _piece in up.iter_any():
                break
        await asyncio.wait_for(server.closed.wait(), 5)  # the backend saw the connection go
    finally:
        await client.close()


async def test_a_large_body_read_by_a_slow_reader_arrives_whole(server: Server) -> None:
    body = bytes(range(256)) * 20_000  # 5 MB: past the high-water mark, so reading is paused and resumed
    server.script = answer(body)
    client = H1Client()
    try:
        async with await client.post(server.url, "/x", b"{}", JSON, timeout=10) as up:
            got = bytearray()
            async for piece in up.iter_any():
                got += piece
                await asyncio.sleep(0)  # not a wait: a slow reader yields; the transport pauses, resumes
        assert bytes(got) == body
    finally:
        await client.close()


async def test_nothing_listening_and_bad_urls() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    client = H1Client()
    with pytest.raises(UpstreamConnectionError, match="cannot connect"):
        await client.post(f"http://127.0.0.1:{port}", "/x", b"{}", JSON, timeout=5)
    with pytest.raises(ValueError, match="http"):
        await client.post("ftp://127.0.0.1/", "/x", b"{}", JSON, timeout=5)
    await client.close()


# -- how far an exchange got: what decides whether a request may be sent to a replacement ----------------
async def test_a_closed_port_is_connect_failed_without_the_address() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    client = H1Client()
    try:
        with pytest.raises(ConnectFailed) as failed:
            await client.post(f"http://127.0.0.1:{port}", "/x", b"{}", JSON, timeout=5)
        assert "refused" in str(failed.value).lower()
        assert "127.0.0.1" not in str(failed.value) and str(port) not in str(failed.value)
    finally:
        await client.close()


async def _one_shot_server(handle: Callable[[socket.socket], None]) -> tuple[int, asyncio.Task[None]]:
    """A raw loopback server that accepts one connection and runs ``handle`` on it (in a thread)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def run() -> None:
        conn, _ = listener.accept()
        try:
            handle(conn)
        finally:
            conn.close()
            listener.close()

    return listener.getsockname()[1], asyncio.create_task(asyncio.to_thread(run))


def _read_all_of_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"{}"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _reset(conn: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): what the kernel does to a killed process's connections."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


async def test_a_server_that_resets_on_accept_is_no_answer() -> None:
    port, done = await _one_shot_server(_reset)
    client = H1Client()
    try:
        # the reset lands either while the request is written or while its answer is awaited, by how the
        # scheduler runs the two ends: both mean "never answered", and both are safe to send elsewhere
        with pytest.raises((NoAnswer, ConnectFailed)) as failed:
            await client.post(f"http://127.0.0.1:{port}", "/x", b"{}", JSON, timeout=5)
        assert "127.0.0.1" not in str(failed.value)
    finally:
        await done
        await client.close()


async def test_a_server_that_reads_the_request_then_closes_is_no_answer() -> None:
    seen: list[bytes] = []

    def read_then_close(conn: socket.socket) -> None:
        seen.append(_read_all_of_request(conn))

    port, done = await _one_shot_server(read_then_close)
    client = H1Client()
    try:
        with pytest.raises(NoAnswer):
            await client.post(f"http://127.0.0.1:{port}", "/x", b"{}", JSON, timeout=5)
        await done
        assert seen and seen[0].startswith(b"POST /x HTTP/1.1")  # it had the whole request
    finally:
        await client.close()


@pytest.mark.parametrize(
    "sent",
    [b"HTTP/1.1 200 OK\r\nContent-Le", b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"partial'],
    ids=["half-a-head", "half-a-body"],
)
async def test_a_server_that_sends_half_an_answer_is_in_flight_not_no_answer(sent: bytes) -> None:
    def half(conn: socket.socket) -> None:
        _read_all_of_request(conn)
        conn.sendall(sent)
        _reset(conn)

    port, done = await _one_shot_server(half)
    client = H1Client()
    try:
        with pytest.raises(UpstreamConnectionError) as failed:
            async with await client.post(f"http://127.0.0.1:{port}", "/x", b"{}", JSON, timeout=5) as up:
                await up.read()
        assert not isinstance(failed.value, (NoAnswer, ConnectFailed))
        assert "mid-answer" in str(failed.value)
    finally:
        await done
        await client.close()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key (PEM files)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_https_backends_are_verified(tmp_path: Path) -> None:
    """A remote OpenAI-compatible connection is https: the answer comes over TLS, the certificate is
    checked (a client that does not trust it refuses), and the kept-alive TLS connection is reused."""
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                await _read_request(reader)
                await answer(b'{"tls":true}')(reader, writer, b"")
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    url = f"https://127.0.0.1:{srv.sockets[0].getsockname()[1]}/v1"
    trusting = H1Client(ssl_context=ssl.create_default_context(cafile=str(cert)))
    doubting = H1Client()  # the system's CAs: the self-signed certificate is refused
    try:
        async with srv:
            for _ in range(2):
                async with await trusting.post(url, "/x", b"{}", JSON, timeout=5) as up:
                    assert await up.read() == b'{"tls":true}'
            assert connections == 1
            with pytest.raises(UpstreamConnectionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
                await doubting.post(url, "/x", b"{}", JSON, timeout=5)
    finally:
        await trusting.close()
        await doubting.close()
