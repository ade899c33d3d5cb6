"""How the control plane reads Ray's answers about an instance actor (``cluster/agent.RayHandle.wait``):
``ActorUnavailableError`` — Ray's "not reachable now, maybe later", raised while a link to the actor's node
is down or the head restarts — is asked again, and the instance kept; ``ActorDiedError`` or any other Ray
error ends it. Ray's own exception classes; the actor handle is a stand-in whose ``wait.remote()`` answers
from a script (making Ray lose a link on cue takes a network cut, which ``tests/cluster`` does)."""

from __future__ import annotations

from collections.abc import Awaitable

import pytest
import ray.exceptions

from superollama.cluster import agent as cluster_agent
from superollama.cluster.agent import RayHandle

INFO = {"pid": 4242, "endpoint": "http://127.0.0.1:9", "provider": "llamacpp", "served_name": "m"}


class _Wait:
    """``actor.wait`` of a stand-in handle: each ``remote()`` answers the next outcome of the script."""

    def __init__(self, outcomes: list[int | BaseException]) -> None:
        self.outcomes = outcomes
        self.calls = 0

    def remote(self) -> Awaitable[int]:
        self.calls += 1
        outcome = self.outcomes.pop(0)

        async def answer() -> int:
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return answer()


class _Actor:
    def __init__(self, outcomes: list[int | BaseException]) -> None:
        self.wait = _Wait(outcomes)


@pytest.fixture(autouse=True)
def killed(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Quick retries, and the actors ``wait`` kills once the instance is over (a stand-in is no actor
    for ``ray.kill``, which a test session with Ray connected would hand to Ray)."""
    monkeypatch.setattr(cluster_agent, "_UNAVAILABLE_FIRST_WAIT", 0.001)
    monkeypatch.setattr(cluster_agent, "_UNAVAILABLE_MAX_WAIT", 0.002)
    gone: list[object] = []

    async def kill(actor: object) -> None:
        gone.append(actor)

    monkeypatch.setattr(cluster_agent, "_kill", kill)
    return gone


def _unavailable() -> ray.exceptions.ActorUnavailableError:
    return ray.exceptions.ActorUnavailableError("the link to its node is down", None)


async def test_an_unreachable_actor_is_asked_again_and_its_exit_code_read(killed: list[object]) -> None:
    actor = _Actor([_unavailable(), _unavailable(), _unavailable(), 0])
    handle = RayHandle("inst-1", actor, INFO, "alpha", "cpu")
    assert await handle.wait() == 0
    assert actor.wait.calls == 4 and not handle.alive()
    assert killed == [actor]  # once the child exited, its actor goes too


async def test_a_dead_actor_or_another_ray_error_ends_the_instance(killed: list[object]) -> None:
    for ending in (ray.exceptions.ActorDiedError(), ray.exceptions.RaySystemError("gone")):
        actor = _Actor([_unavailable(), ending])
        handle = RayHandle("inst-2", actor, INFO, "alpha", "cpu")
        assert await handle.wait() == -1
        assert actor.wait.calls == 2 and not handle.alive()
        assert killed[-1] is actor
