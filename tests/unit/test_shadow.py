"""Shadow traffic on the data plane without network: the draw, the bounded queue that drops (and counts)
instead of making a client wait, the comparison helpers, and the per-target windows it reports."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import orjson
from tests.doubles import NoCounts, NoStarter
from tests.mock_transport import MockTransport, Reply, Sent

from superollama.core.deployments import ShadowSample
from superollama.core.routing import Deployment, DeploymentTarget, Route, RouteTarget, RoutingTable
from superollama.core.types import Endpoint
from superollama.gateway.lease import Lease
from superollama.gateway.shadow import ShadowJob, ShadowMirror, answer_in, answer_of, length_of, similarity
from superollama.gateway.transport import Mounts
from superollama.telemetry.windows import TargetWindows


class Store:
    def __init__(self) -> None:
        self.samples: list[ShadowSample] = []

    async def add(self, samples: Sequence[ShadowSample]) -> None:
        self.samples += samples


def table(percent: int) -> RoutingTable:
    a, b = Route("a:1", "a:1", True, 0), Route("b:1", "b:1", True, 0)
    targets = (DeploymentTarget("a:1", 100), DeploymentTarget("b:1", percent, "shadow"))
    return RoutingTable.build([a, b], 1, [Deployment("chat", targets)])


def mirror(windows: TargetWindows, draws: list[float], queue: int = 1) -> ShadowMirror:
    return ShadowMirror(
        None,  # type: ignore[arg-type]  # never sends: the workers are not started
        None,  # type: ignore[arg-type]
        Store(),
        windows,
        timeout=1,
        queue=queue,
        rand=lambda: draws.pop(0),
    )


def test_the_shadow_is_part_of_the_snapshot_but_never_picked() -> None:
    dep = table(5).deployment("chat")
    assert dep is not None and dep.shadow is not None and dep.shadow.name == "b:1" and dep.shadow_percent == 5
    assert {dep.pick().name for _ in range(50)} == {"a:1"}  # type: ignore[union-attr]
    assert table(0).deployment("chat").shadow is None  # type: ignore[union-attr]


def test_a_full_queue_drops_the_copy_and_counts_it() -> None:
    windows = TargetWindows(60)
    m = mirror(windows, [0.01, 0.06, 0.02, 0.03])
    dep = table(5).deployment("chat")
    assert m.wants(dep) and not m.wants(dep)  # 1 < 5 % and 6 ≥ 5 %
    assert not m.wants(None) and not m.wants(table(0).deployment("chat"))
    assert dep is not None and dep.shadow is not None
    job = ShadowJob("chat", dep.shadow, "a:1", "/v1/chat/completions", {"model": "chat"}, 0.01, "hi")
    m.copy(job)
    m.copy(job)  # the queue holds one: dropped, not waited for
    assert m.dropped == 1
    rows = {(d, t): (s.count, n) for d, t, s, n in windows.snapshot()}
    assert rows == {("chat", "b:1"): (0, 1)}


def test_answers_compare_by_text_or_vector() -> None:
    assert answer_of(b'{"choices":[{"message":{"content":"hi"}}]}') == "hi"
    assert answer_of(b'{"choices":[{"text":"yo"}]}') == "yo"
    assert answer_of(b'{"data":[{"embedding":[1.0,0.0]}]}') == [1.0, 0.0]
    assert answer_of(b"not json") is None and answer_of(b"{}") is None
    assert length_of("four") == 4 and length_of(None) == 0
    assert similarity([1.0, 0.0], [1.0, 0.0]) == 1.0 and similarity([1.0, 0.0], [0.0, 1.0]) == 0.0
    assert similarity("a", "b") is None and similarity([1.0], [1.0, 2.0]) is None


def test_windows_record_only_requests_routed_through_a_deployment() -> None:
    from superollama.core.types import RequestRecord

    now = [100.0]
    windows = TargetWindows(10, clock=lambda: now[0])
    windows.record(RequestRecord("1", "openai", "chat", "a:1", 200, 0.0, 0.02))  # a plain version
    for status in (200, 200, 502):
        windows.record(
            RequestRecord("2", "openai", "chat", "chat", status, 0.0, 0.02, deployment="chat", target="a:1")
        )
    stats = windows.stats("chat", "a:1")
    assert (stats.count, stats.errors) == (3, 1) and windows.stats("chat", "b:1").count == 0
    now[0] += 11  # the window has moved past them
    assert windows.stats("chat", "a:1").count == 0
    assert [(d, t, s.count) for d, t, s, _ in windows.snapshot()] == [("chat", "a:1", 0)]  # reported as 0


class Holder:
    """``ModelTargets.hold`` for a route whose instance runs: a lease on its one target."""

    @contextlib.asynccontextmanager
    async def hold(self, route: Route) -> AsyncIterator[Lease]:
        lease = Lease(route, route.targets[0], NoStarter(), NoCounts())
        try:
            yield lease
        finally:
            lease.release()

    def route(self, principal: None, name: str) -> Route:
        raise AssertionError("no embedding model is set")


async def test_every_copy_is_compared_and_stored_while_sends_overlap() -> None:
    """A slow copy that ends after faster ones were stored still lands (no sample lost between the
    workers' batches), and each comparison says what the shadow answered."""

    async def backend(sent: Sent) -> Reply:
        text = orjson.loads(sent.body)["messages"][0]["content"]
        await asyncio.sleep(0.05 if text == "slow" else 0)
        answer = "same" if text != "differs" else "other answer"
        return Reply.json({"choices": [{"message": {"content": answer}}]})

    shadow = Route("b:1", "b:1", True, 0, (RouteTarget("b", Endpoint("http://b", "openai", "b")),))
    store = Store()
    m = ShadowMirror(Holder(), Mounts(MockTransport(backend)), store, TargetWindows(60), timeout=5, queue=16)
    m.start()
    try:
        for text in ("slow", "fast-1", "fast-2", "differs"):
            body = {"model": "chat", "messages": [{"role": "user", "content": text}], "stream": True}
            m.copy(ShadowJob("chat", shadow, "a:1", "/v1/chat/completions", body, 0.01, "same"))
        await asyncio.wait_for(m.drain(), 10)
    finally:
        await m.close()
    assert len(store.samples) == 4 and m.sent == 4 and m.dropped == 0
    by_exact = sorted((s.exact, s.shadow_length) for s in store.samples)
    assert by_exact == [(False, 12), (True, 4), (True, 4), (True, 4)]
    assert all(s.error is None and s.shadow_latency is not None for s in store.samples)


def test_the_answer_is_read_from_every_client_api_shape() -> None:
    """Each edge hands the tap its client's answer as it was sent; the comparison needs its text (or
    vector) whatever the protocol."""
    shapes = {
        "openai chat": {"choices": [{"message": {"content": "hi"}}]},
        "openai completion": {"choices": [{"text": "hi"}]},
        "ollama chat": {"model": "m", "message": {"role": "assistant", "content": "hi"}, "done": True},
        "ollama generate": {"model": "m", "response": "hi", "done": True},
        "anthropic": {
            "type": "message",
            "content": [{"type": "text", "text": "h"}, {"type": "tool_use"}, {"type": "text", "text": "i"}],
        },
        "responses": {
            "object": "response",
            "output": [
                {"type": "reasoning"},
                {"type": "message", "content": [{"type": "output_text", "text": "hi"}]},
            ],
        },
    }
    for name, body in shapes.items():
        assert answer_in(body) == "hi", name
        assert answer_of(orjson.dumps(body)) == "hi", name
    assert answer_in({"data": [{"embedding": [1.0, 2.0]}]}) == [1.0, 2.0]  # OpenAI embeddings
    assert answer_in({"embeddings": [[1.0, 2.0]]}) == [1.0, 2.0]  # Ollama /api/embed
    assert answer_in({"embedding": [1.0, 2.0]}) == [1.0, 2.0]  # Ollama /api/embeddings
    assert answer_in({"error": "x"}) is None and answer_in([1]) is None and answer_of(b"not json") is None
    assert answer_in({"choices": []}) is None
