"""The change feed, the leader lock and the gateways' rows on a real registry (Postgres schema or SQLite).

- A change bumps its kind's generation and ``all`` in its own transaction; a change that fails bumps
  nothing (and on Postgres sends no NOTIFY); a NOTIFY arrives only once the change is visible.
- ``ChangeFeed`` reloads exactly the kinds that moved, on a ping, and catches up by itself after its
  session is cut.
- ``LeaderLock``: one leader among two; the other takes over when the leader's session ends.
- The leader ends the jobs of a dead gateway (failed, naming it), never a live one's.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from tests.waiting import wait_until

from superollama.control import ChangeFeed, JobManager, LeaderLock
from superollama.control.feed import SAFETY
from superollama.core import EventRecord, JobRecord, JobState, VersionRecord
from superollama.errors import ModelExists
from superollama.registry import Registry, open_registry
from superollama.registry._base import CHANGE_KINDS
from superollama.registry._cluster import GatewayRecord


def version(name: str) -> VersionRecord:
    family, _, tag = name.partition(":")
    return VersionRecord(
        name=name, model=family, tag=tag, format="gguf", digest="sha256:" + "0" * 64, size=1, source="test"
    )


async def test_a_change_bumps_its_generation_in_its_own_transaction(registry: Registry) -> None:
    start = await registry.cluster.generations()
    assert set(start) == {"all", *CHANGE_KINDS}
    await registry.versions.add(version("m:1"))
    after = await registry.cluster.generations()
    assert after["catalog"] == start["catalog"] + 1 and after["all"] == start["all"] + 1
    assert after["keys"] == start["keys"] and after["connections"] == start["connections"]
    with pytest.raises(ModelExists):
        await registry.versions.add(version("m:1"))  # refused: rolled back, nothing bumped
    assert await registry.cluster.generations() == after
    await registry.versions.set_enabled("m:1", False)
    await registry.versions.delete("m:1")
    assert (await registry.cluster.generations())["catalog"] == after["catalog"] + 2


@pytest.mark.postgres
async def test_notify_comes_with_the_commit_only(pg_registry: Registry) -> None:
    reg = pg_registry
    opened = await reg.session()
    assert opened is not None
    conn, channel = opened
    try:
        pings: asyncio.Queue[str] = asyncio.Queue()
        await conn.add_listener(channel, lambda *args: pings.put_nowait(args[3]))
        await reg.versions.add(version("n:1"))
        payload = await asyncio.wait_for(pings.get(), 10)
        generations = await reg.cluster.generations()
        assert payload == f"catalog:{generations['catalog']}:{generations['all']}"
        with pytest.raises(ModelExists):
            await reg.versions.add(version("n:1"))  # rolled back: no ping
        await reg.versions.set_enabled("n:1", False)
        generations = await reg.cluster.generations()
        # pings arrive in commit order: had the refused add sent one, it would come first
        payload = await asyncio.wait_for(pings.get(), 10)
        assert payload == f"catalog:{generations['catalog']}:{generations['all']}"
    finally:
        await conn.close()


async def test_the_feed_reloads_what_moved_and_catches_up_after_a_cut(
    registry: Registry, db_url: str
) -> None:
    reloaded: list[str] = []

    def reloader(kind: str) -> object:
        async def reload() -> None:
            reloaded.append(kind)

        return reload

    feed = ChangeFeed(registry, poll=30.0)  # long: the ping (or SQLite's 1 s check) must do it
    for kind in ("catalog", "connections", "keys"):
        feed.watch(kind, reloader(kind))  # type: ignore[arg-type]
    await feed.baseline()
    await feed.start()
    try:
        await registry.versions.add(version("f:1"))
        await wait_until(lambda: reloaded == ["catalog"], what="the catalog reloaded, nothing else")
        assert feed.generation == (await registry.cluster.generations())["all"]
        if db_url.startswith("postgres"):
            await wait_until(lambda: feed.connected, what="the feed listening")
            admin = await asyncpg.connect(db_url.replace("+asyncpg", "").split("?")[0])
            try:
                cut = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = $1",
                    "superollama-control " + db_url.rsplit("schema=", 1)[1],
                )
                assert cut == 1  # the feed's session (this schema's only one)
            finally:
                await admin.close()
        await registry.versions.set_enabled("f:1", False)  # made while the feed may be reconnecting
        await wait_until(lambda: reloaded.count("catalog") == 2, what="the change made during the cut")
        assert feed.generation == (await registry.cluster.generations())["all"]
    finally:
        await feed.close()


async def test_one_leader_and_a_hand_over(registry: Registry, db_url: str) -> None:
    if not db_url.startswith("postgres"):
        lock = LeaderLock(registry, retry=0.05)
        await lock.start()
        assert lock.is_leader  # SQLite: one control plane per file
        await lock.close()
        return
    first, second = LeaderLock(registry, retry=0.05), LeaderLock(registry, retry=0.05)
    changes: list[bool] = []

    async def on_change(leader: bool) -> None:
        changes.append(leader)

    second.on_change(on_change)
    await first.start()
    await second.start()
    try:
        assert first.is_leader and not second.is_leader
        await first.close()  # its session ends: Postgres releases the lock
        await wait_until(lambda: second.is_leader, what="the second lock to take over")
        assert changes == [True]
    finally:
        await first.close()
        await second.close()


async def test_the_leader_ends_the_jobs_of_dead_gateways_only(registry: Registry) -> None:
    await registry.cluster.heartbeat(GatewayRecord(id="gw-live", host="h", pid=1))
    live = await registry.jobs.add(JobRecord(id="job-live", kind="pull", target="x"), owner="gw-live")
    dead = await registry.jobs.add(JobRecord(id="job-dead", kind="pull", target="y"), owner="gw-dead")
    jobs = JobManager(registry, owner="gw-leader", shared=True)
    await jobs.start()  # shared registry: nothing ended at start
    assert (await registry.jobs.get(dead.id)).state is JobState.RUNNING
    ended = await jobs.end_orphans({"gw-live", "gw-leader"}, leader="gw-leader")
    assert [j.id for j in ended] == [dead.id]
    record = await registry.jobs.get(dead.id)
    assert record.state is JobState.FAILED
    assert record.error is not None and "gw-dead" in record.error and "gw-leader" in record.error
    assert (await registry.jobs.get(live.id)).state is JobState.RUNNING
    events = await registry.events.list(target="y")
    assert any(e.action == "job.pull" and e.result == "failed" for e in events)
    await jobs.close()


async def test_a_restarted_gateway_ends_its_own_jobs_only(registry: Registry) -> None:
    """A gateway keeps its id across a restart (its name, or the supervisor's pid with --workers): what it
    left running cannot run any more, while another gateway's jobs go on."""
    mine = await registry.jobs.add(JobRecord(id="job-mine", kind="move", target="m"), owner="gw-me")
    other = await registry.jobs.add(JobRecord(id="job-other", kind="pull", target="o"), owner="gw-other")
    jobs = JobManager(registry, owner="gw-me", shared=True)
    await jobs.start()
    record = await registry.jobs.get(mine.id)
    assert record.state is JobState.FAILED and record.error == "the server stopped before the job finished"
    assert (await registry.jobs.get(other.id)).state is JobState.RUNNING
    await jobs.close()


async def test_a_poller_wakes_on_its_topic_from_another_process_not_on_a_heartbeat(
    registry: Registry, db_url: str
) -> None:
    watch = registry.watch
    if db_url.startswith("postgres"):
        assert watch is None  # NOTIFY and the pollers' own intervals: nothing to watch
        return
    assert watch is not None
    topics = ["generations", "gateways", "webhooks", "batches", "fine_tuning", "rollouts"]
    await registry.cluster.heartbeat(GatewayRecord(id="gw-idle", host="h", pid=1))
    version, seen = watch.version(), watch.probe(topics)
    await registry.cluster.heartbeat(GatewayRecord(id="gw-idle", host="h", pid=1))
    assert watch.version() != version  # a commit of another connection moves it…
    assert watch.probe(topics) == seen  # …but touches no poller's topic: it wakes nobody

    feed = ChangeFeed(registry, poll=30.0)
    webhooks = feed.subscribe("webhooks")
    batches = feed.subscribe("batches")
    assert webhooks.watched
    await feed.baseline()
    await feed.start()
    other = await open_registry(db_url)  # another gateway process on the same file
    try:
        # shorter than the nudge's SAFETY: only the feed can wake it in time (first: its baseline's look)
        await asyncio.wait_for(webhooks.sleep(30.0), timeout=SAFETY / 2)
        batches.clear()
        await other.events.add(EventRecord(action="pull", target="x"))
        await asyncio.wait_for(webhooks.sleep(30.0), timeout=SAFETY / 2)
        assert not batches.pending  # another topic: still asleep
    finally:
        await other.close()
        await feed.close()
