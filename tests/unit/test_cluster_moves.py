"""Which instance ``mv NAME --to-node NODE`` moves (``cluster/moves.py``), and what it refuses before
anything starts. The move itself runs on a real Ray cluster: ``tests/cluster/test_ray_replicas.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from superollama.agent.instance import LiveInstance
from superollama.cluster.moves import MoveOutcome, _source
from superollama.core import Endpoint, InstanceState
from superollama.errors import Conflict, NotFound


@dataclass
class Placed:
    """An instance handle as the cluster's agent has it: where it runs."""

    node: str
    pid: int = 1
    endpoint: Endpoint = field(
        default_factory=lambda: Endpoint(base_url="http://127.0.0.1:1", provider="openai", served_name="m")
    )

    def alive(self) -> bool:
        return True

    async def wait(self) -> int:
        return 0

    async def stop(self, timeout: float) -> None:
        return None


def _inst(ident: str, node: str, state: InstanceState = InstanceState.READY) -> LiveInstance:
    return LiveInstance(
        id=ident,
        version="m:1",
        runtime="llamacpp",
        device="cpu",
        handle=Placed(node),
        started_at=datetime.now(UTC),
        load_seconds=1.0,
        last_used=0.0,
        state=state,
    )


def test_the_oldest_ready_instance_elsewhere_moves() -> None:
    running = [_inst("a1", "alpha", InstanceState.DRAINING), _inst("b1", "beta"), _inst("a2", "alpha")]
    assert _source(running, "m:1", "beta", None).id == "a2"
    assert _source(running, "m:1", "alpha", None).id == "b1"
    assert _source(running, "m:1", "beta", "a2").id == "a2"


def test_refusals_name_the_reason() -> None:
    with pytest.raises(Conflict, match="no running instance to move"):
        _source([], "m:1", "beta", None)
    with pytest.raises(Conflict, match="runs on node 'beta' already"):
        _source([_inst("b1", "beta")], "m:1", "beta", None)
    with pytest.raises(Conflict, match="runs on node 'beta' already"):
        _source([_inst("b1", "beta")], "m:1", "beta", "b1")
    with pytest.raises(NotFound, match="no running instance 'zz'"):
        _source([_inst("a1", "alpha")], "m:1", "beta", "zz")


def test_the_answer_names_both_sides() -> None:
    out = MoveOutcome("m:1", "b2", "beta", "a1", "alpha", 12.3456, 3.21, 0).as_json()
    assert out == {
        "version": "m:1",
        "instance": "b2",
        "node": "beta",
        "from": {"instance": "a1", "node": "alpha"},
        "seconds": 12.346,
        "ready_seconds": 3.21,
        "cut": 0,
    }
