"""The limiter's Redis client: RESP parsing, pipelining order, error replies, timeouts and reconnects.

The protocol-level cases run against a scripted loopback server (it answers exactly the bytes a test
gives it, or nothing); tests/integration/test_security_redis.py runs the same client against real Redis.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from superollama.security.resp import NoScript, RespClient, RespError, encode, parse


def test_encode_is_an_array_of_bulk_strings() -> None:
    expected = b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n2\r\n$3\r\n0.5\r\n"
    assert encode(("EVALSHA", b"ab", 2, 0.5)) == expected
    assert encode(("SET", "k", "é")) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\xc3\xa9\r\n"


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"+OK\r\n", "OK"),
        (b":-12\r\n", -12),
        (b"$5\r\nhe\r\no\r\n", "he\r\no"),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"*0\r\n", []),
        (b"*3\r\n:0\r\n$3\r\n1.5\r\n*2\r\n+a\r\n$-1\r\n", [0, "1.5", ["a", None]]),
    ],
)
def test_parse_every_reply_type(raw: bytes, value: object) -> None:
    assert parse(raw, 0) == (value, len(raw))
    assert parse(b"junk" + raw, 4) == (value, len(raw) + 4)
    for cut in range(len(raw)):  # any prefix is incomplete: the position does not move
        assert parse(raw[:cut], 0)[1] == 0


def test_parse_error_replies_are_values() -> None:
    err, _ = parse(b"-NOSCRIPT No matching script\r\n", 0)
    assert isinstance(err, NoScript) and "No matching script" in str(err)
    err, _ = parse(b"-ERR wrong number of arguments\r\n", 0)
    assert type(err) is RespError


Answer = Callable[[bytes], bytes | None]


@dataclass
class Scripted:
    """A loopback server: each command it reads is recorded in ``received`` and answered by ``answer``
    (None: no answer at all)."""

    port: int = 0
    received: list[bytes] = field(default_factory=list)
    answer: Answer = lambda _cmd: b"+OK\r\n"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    state = Scripted()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        while data := await reader.read(65536):
            buf += data
            while buf:
                end = _command_end(buf)
                if end is None:
                    break
                cmd, buf = buf[:end], buf[end:]
                state.received.append(cmd)
                reply = state.answer(cmd)
                if reply is not None:
                    writer.write(reply)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state
        server.close()


def _command_end(buf: bytes) -> int | None:
    pos = parse(buf, 0)[1]
    return pos or None


async def test_pipelined_calls_get_their_own_replies_in_order(
    scripted: Scripted,
) -> None:
    scripted.answer = lambda cmd: b"$%d\r\n%s\r\n" % (len(cmd), cmd)  # echo the raw command back
    client = RespClient(scripted.url + "/0", timeout=5)  # about order, not time: room for a busy machine
    try:
        replies = await asyncio.gather(*(client.call("GET", f"key{i}") for i in range(200)))
        assert replies == [encode(("GET", f"key{i}")).decode() for i in range(200)]
        assert len(scripted.received) == 200  # one connection, no extra commands (db 0: no SELECT)
    finally:
        await client.close()


async def test_error_reply_fails_only_its_call(scripted: Scripted) -> None:
    scripted.answer = lambda cmd: b"-NOSCRIPT nope\r\n" if b"EVALSHA" in cmd else b":7\r\n"
    client = RespClient(scripted.url)
    try:
        first = asyncio.ensure_future(client.call("EVALSHA", "abc", 0))
        second = asyncio.ensure_future(client.call("INCR", "k"))
        with pytest.raises(NoScript):
            await first
        assert await second == 7
    finally:
        await client.close()


async def test_auth_and_select_from_the_url(scripted: Scripted) -> None:
    client = RespClient(f"redis://me:p%40ss@127.0.0.1:{scripted.port}/3")
    try:
        assert await client.call("PING") == "OK"
        assert scripted.received == [encode(("AUTH", "me", "p@ss")), encode(("SELECT", 3)), encode(("PING",))]
    finally:
        await client.close()


async def test_a_silent_server_times_out_then_the_client_reconnects(
    scripted: Scripted,
) -> None:
    scripted.answer = lambda _cmd: None
    client = RespClient(scripted.url, timeout=0.2)
    try:
        calls = [asyncio.ensure_future(client.call("GET", "k")) for _ in range(3)]
        for call in calls:
            with pytest.raises(TimeoutError):
                await call
        scripted.answer = lambda _cmd: b"$1\r\nv\r\n"
        assert await client.call("GET", "k") == "v"  # a fresh connection
        assert len(scripted.received) == 4
    finally:
        await client.close()


async def test_a_closed_connection_fails_waiting_calls_and_reconnects(
    scripted: Scripted,
) -> None:
    client = RespClient(scripted.url, timeout=5)
    try:
        assert await client.call("PING") == "OK"
        # a reply the client cannot parse: it drops the connection
        scripted.answer = lambda _cmd: b"?garbage\r\n"
        with pytest.raises(ConnectionError):
            await client.call("PING")
        scripted.answer = lambda _cmd: b"+PONG\r\n"
        assert await client.call("PING") == "PONG"
    finally:
        await client.close()


async def test_nothing_listening_is_a_connection_error() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    client = RespClient(f"redis://127.0.0.1:{port}", timeout=1)
    with pytest.raises(OSError):
        await client.call("PING")
    await client.close()


def test_bad_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="scheme"):
        RespClient("http://127.0.0.1:6379")
