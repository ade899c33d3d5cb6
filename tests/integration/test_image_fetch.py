"""The gateway's image step (``gateway/images.py``) against a real HTTP server on loopback: what it fetches,
what it refuses (inner addresses unless allowed, redirects into them, other schemes, oversize, slow,
non-images) and the text-only refusal."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from tests.vision_model import png

from superollama.core.images import VISION, data_url
from superollama.core.routing import Route
from superollama.gateway.images import ImageInputs, ImageRefused, TextOnlyModel

RED = png((255, 0, 0))
READS_IMAGES = Route("llava:tiny", "llava:tiny", True, 0, capabilities=("completion", VISION))
TEXT_ONLY = Route("smollm2:135m", "smollm2:135m", True, 0)
CONNECTION = Route("lab/any", "lab/any", True, 0, connection="lab")


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(5)  # longer than the fetch timeout under test: time itself is what is tested
    return web.Response(body=RED)


def _body(data: bytes | str) -> Any:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=data) if isinstance(data, str) else web.Response(body=data)

    return handle


def _redirect(to: str) -> Any:
    async def handle(request: web.Request) -> web.Response:
        raise web.HTTPFound(to)

    return handle


@pytest.fixture
async def site() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/red.png", _body(RED))
    app.router.add_get("/big.png", _body(RED + b"\0" * 4096))
    app.router.add_get("/text", _body("hello"))
    app.router.add_get("/slow.png", _slow)
    app.router.add_get("/hop", _redirect("/red.png"))
    app.router.add_get("/loop", _redirect("/loop"))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


def _payload(url: str) -> dict[str, Any]:
    parts = [{"type": "text", "text": "what is it"}, {"type": "image_url", "image_url": {"url": url}}]
    return {"model": "m", "messages": [{"role": "user", "content": parts}]}


def _url_of(payload: dict[str, Any]) -> str:
    return str(payload["messages"][0]["content"][1]["image_url"]["url"])


async def test_fetches_urls_as_data_when_inner_addresses_are_allowed(site: str) -> None:
    images = ImageInputs(allow_private=True)
    for path in ("/red.png", "/hop"):
        payload = _payload(site + path)
        await images.prepare(READS_IMAGES, payload)
        assert _url_of(payload) == data_url(RED, "image/png")


async def test_inner_addresses_are_refused_by_default(site: str) -> None:
    images = ImageInputs()
    port = site.rsplit(":", 1)[1]
    for url in (
        site + "/red.png",
        f"http://localhost:{port}/red.png",  # a name that resolves to loopback: refused where it resolves
        f"http://[::1]:{port}/red.png",
        "http://10.1.2.3/x.png",
        "http://169.254.169.254/latest/meta-data",  # the cloud metadata address
        "http://[::ffff:127.0.0.1]/x.png",
    ):
        with pytest.raises(ImageRefused, match="not a public address"):
            await images.prepare(READS_IMAGES, _payload(url))


async def test_each_hop_is_checked_again() -> None:
    # every URL of a redirect chain goes through this check (and host names through the resolver), so a
    # public page that redirects inwards is refused at that hop
    images = ImageInputs()
    images._allowed("http://93.184.216.34/x.png")  # a public literal passes the check itself
    with pytest.raises(ImageRefused, match="not a public address"):
        images._allowed("http://127.0.0.1:9/x.png")


async def test_limits(site: str) -> None:
    small = ImageInputs(allow_private=True, max_bytes=len(RED) + 10, timeout=0.5)
    with pytest.raises(ImageRefused, match="byte limit"):
        await small.prepare(READS_IMAGES, _payload(site + "/big.png"))
    with pytest.raises(ImageRefused, match="not an image"):
        await small.prepare(READS_IMAGES, _payload(site + "/text"))
    with pytest.raises(ImageRefused, match="no answer within"):
        await small.prepare(READS_IMAGES, _payload(site + "/slow.png"))
    with pytest.raises(ImageRefused, match="redirects"):
        await small.prepare(READS_IMAGES, _payload(site + "/loop"))
    with pytest.raises(ImageRefused, match="byte limit"):
        await small.prepare(READS_IMAGES, _payload(data_url(RED + b"\0" * 64)))


async def test_data_urls_and_base64() -> None:
    images = ImageInputs()
    payload = _payload(data_url(RED))
    await images.prepare(READS_IMAGES, payload)
    assert _url_of(payload) == data_url(RED)
    bare = _payload(base64.b64encode(RED).decode())
    await images.prepare(READS_IMAGES, bare)
    assert _url_of(bare) == data_url(RED, "image/png")
    for bad, why in (
        ("file:///etc/passwd", "unsupported image URL scheme 'file'"),
        ("data:image/png;base64,@@@", "not valid base64"),
        (data_url(b"plain text, not pixels", "image/png"), "not a PNG"),
        (base64.b64encode(b"plain text").decode(), "not a PNG"),
    ):
        with pytest.raises(ImageRefused, match=why):
            await images.prepare(READS_IMAGES, _payload(bad))


async def test_text_only_models_refuse_images_and_connections_decide_for_themselves() -> None:
    images = ImageInputs()
    with pytest.raises(TextOnlyModel, match="text-only") as refused:
        await images.prepare(TEXT_ONLY, _payload(data_url(RED)))
    assert refused.value.status == 400 and refused.value.code == "image_input_not_supported"
    await images.prepare(TEXT_ONLY, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    await images.prepare(CONNECTION, _payload(data_url(RED)))
