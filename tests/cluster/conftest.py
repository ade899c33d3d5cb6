"""A real Ray cluster for the session (``ray.cluster_utils.Cluster``): a head and two nodes that carry the
``so_node:NAME`` resource the control plane names nodes by — ``alpha`` (CPU) and ``beta`` (Ray told it
has two GPUs: a fake count, no GPU memory behind it) — each with a blob store of its own
(``SUPEROLLAMA_NODE_STORE``, in the nodes' environment): the machine's one filesystem is not shared
between them, so a version's blobs are really copied to the node an instance is placed on. All on
loopback, with Ray's health check at 500 ms x 3 (a dead node is seen in about a second and a half), no
usage report, and a temporary directory of this run's own. Stopped by PID (``Cluster.shutdown`` kills the
processes it started), never with ``ray stop``: that kills every Ray process on the machine by name."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from superollama.cluster.blobs import NODE_STORE_ENV

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # else 127.0.0.1 is rewritten to the machine's address
}
HEALTH = {
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 3,
    "health_check_initial_delay_ms": 0,
}


@dataclass
class RayTestCluster:
    address: str  # the head's control store, host:port
    tmpdir: str
    env: dict[str, str]
    cluster: Any  # ray.cluster_utils.Cluster: a test may add a node and kill it
    stores: dict[str, Path] = field(default_factory=dict)  # node name → the root of its blob store


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayTestCluster]:
    # Ray's Unix sockets live under the temp dir: keep the path short (108 bytes at most)
    tmpdir = tempfile.mkdtemp(prefix="so-ray-", dir="/tmp")
    # A node's Python worker for an instance actor can take over the default 30 s to start on a 2-core box
    # running the rest of the suite (a move failed so under load): the servers here wait longer for it.
    # The nodes here are one machine: an instance on each, each taking every core (llama.cpp's default),
    # makes twice as many compute threads as cores, and under the tests' load llama.cpp's threads spin at
    # their barriers waiting for a partner that is not running (1.5 tokens/s against 31 with a thread
    # each, measured on a 2-core box; a stream then outlived the upstream timeout). One thread each is
    # this machine shared between its nodes, as separate machines would not share it.
    env = {
        **RAY_ENV,
        "RAY_TMPDIR": tmpdir,
        "SUPEROLLAMA_PLACEMENT_TIMEOUT": "120",
        "SUPEROLLAMA_LLAMACPP_THREADS": "1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "node_ip_address": "127.0.0.1",
            "num_cpus": 0,  # the head is the control store, not a node models go to
            "include_dashboard": False,
            "_system_config": HEALTH,
        },
    )
    stores = {name: Path(tmpdir) / f"store-{name}" for name in ("alpha", "beta")}
    try:
        cluster.add_node(
            node_ip_address="127.0.0.1",
            num_cpus=1,
            resources={"so_node:alpha": 1},
            env_vars={NODE_STORE_ENV: str(stores["alpha"])},
        )
        cluster.add_node(
            node_ip_address="127.0.0.1",
            num_cpus=1,
            num_gpus=2,
            resources={"so_node:beta": 1},
            env_vars={NODE_STORE_ENV: str(stores["beta"])},
        )
        cluster.wait_for_nodes()
        yield RayTestCluster(address=cluster.address, tmpdir=tmpdir, env=env, cluster=cluster, stores=stores)
    finally:
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(tmpdir, ignore_errors=True)
