"""``serve --cluster`` without an address starts a Ray head of its own (``cluster/head.py``): on the
address it is given (loopback here), taken over by the next control plane after a crash (one head, not
two), stopped by its PID with everything it started."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import psutil
import pytest
from tests.waiting import wait_until

from superollama.cluster.head import RayHead

pytestmark = pytest.mark.cluster


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _listening(procs: list[psutil.Process]) -> set[str]:
    """The addresses the head's processes accept connections on."""
    out = set()
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        out |= {c.laddr.ip.removeprefix("::ffff:") for c in conns if c.status == psutil.CONN_LISTEN}
    return out


async def test_a_head_on_loopback_taken_over_after_a_crash_and_stopped_by_pid(tmp_path: Path) -> None:
    temp = Path("/tmp") / f"so-head-{tmp_path.name[-12:]}"  # Ray's socket paths must stay short
    head = RayHead("127.0.0.1", "solo", temp)
    address = await head.start()
    assert address.startswith("127.0.0.1:")
    assert head._proc is not None
    pid = head._proc.pid
    try:

        def raylet_listens() -> bool:  # the node's own server, started after the control store
            return any("raylet" in " ".join(p.cmdline()) and _listening([p]) for p in _tree(pid))

        await wait_until(raylet_listens, timeout=60, interval=0.2, what="the head's raylet listening")
        procs = _tree(pid)
        assert any("gcs_server" in " ".join(p.cmdline()) for p in procs)
        assert _listening(procs) == {"127.0.0.1"}  # no port on all interfaces

        # a control plane that died without its cleanup: the next one finds the same head answering
        successor = RayHead("127.0.0.1", "solo", temp)
        assert await successor.start() == address
        assert successor._proc is None  # nothing started
        await successor.stop()
        _, alive = await asyncio.to_thread(psutil.wait_procs, procs, 30)
        assert alive == [], [p.cmdline()[:3] for p in alive]
    finally:
        await head.stop()
        shutil.rmtree(temp, ignore_errors=True)
