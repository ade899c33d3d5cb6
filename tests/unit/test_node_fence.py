"""``agent --join``'s fence (``cluster/join.py``): a node that cannot reach the Ray head for ``fence``
seconds stops its Ray node (Ray leaves a cut-off raylet waiting, and its model processes with it), then
joins again; a head that answers again in time keeps the node running. The Ray node is a real child
process (``sleep``) and the control plane a real HTTP server on loopback; only the head's answer (the
probe) is the test's. Found by ``tests/cluster/test_two_hosts.py``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from tests.waiting import wait_until

from superollama.cluster.join import JoinSpec, NodeSupervisor


@pytest.fixture
async def control_plane() -> AsyncIterator[str]:
    """``POST /admin/v1/nodes/join``: answers the head's address."""

    async def join(_request: web.Request) -> web.Response:
        return web.json_response({"address": "127.0.0.1:1", "node": {"name": "far"}})

    app = web.Application()
    app.router.add_post("/admin/v1/nodes/join", join)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class Head:
    """The probe: whether the head answers (the test flips it)."""

    def __init__(self) -> None:
        self.up = True
        self.asked = 0

    async def __call__(self, address: str) -> bool:
        self.asked += 1
        return self.up


async def _sleeper(*_argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """A Ray node stand-in: a real child that runs until it is signalled."""
    kwargs.pop("env", None)
    sleep = "import time; time.sleep(600)"
    return await asyncio.create_subprocess_exec(sys.executable, "-c", sleep, **kwargs)


async def test_a_node_cut_off_from_the_head_stops_its_ray_node_and_joins_again(control_plane: str) -> None:
    head, said = Head(), []
    supervisor = NodeSupervisor(
        JoinSpec(url=control_plane, token="soj-x", name="far", node_ip="127.0.0.1"),
        say=said.append,
        spawn=_sleeper,
        backoff_first=0.01,
        fence=0.5,
        probe=head,
        probe_every=0.05,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    try:
        await wait_until(lambda: supervisor.child is not None and head.asked >= 3, what="the first node")
        first = supervisor.child
        assert first is not None
        # the head answers for longer than the fence (25 probes, 50 ms apart): the node keeps running
        await wait_until(lambda: head.asked >= 25, what="probes over more than the fence")
        assert supervisor.starts == 1 and first.returncode is None

        head.up = False  # cut off: after the fence, the node is stopped and started again
        await wait_until(lambda: first.returncode is not None, timeout=10, what="the fenced node stopped")
        assert any("has not answered for 0.5 s" in line for line in said), said
        head.up = True
        await wait_until(lambda: supervisor.starts == 2, timeout=10, what="the node joined again")
        assert supervisor.child is not first and supervisor.child is not None
        assert supervisor.child.returncode is None
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
    assert supervisor.child is not None and supervisor.child.returncode is not None
