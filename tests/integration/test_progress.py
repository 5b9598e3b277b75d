"""Progress beside the lease (eventlog/progress.py) against real PostgreSQL and the real app: written only for the
attempt that holds the lease, gone when another attempt takes it, shown by GET clip only while running, pushed over
the WebSocket only to who may see the project; the Python feed client hands it, and `caught_up`, to its callbacks;
pending clips show their place in the queue."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import msgspec
import pytest
from websockets.asyncio.client import ClientConnection

from api.feed_client import FeedClient
from domain.clip import Start
from eventlog import progress
from eventlog.store import init_connection
from projections import clip_status, queue
from tests.feed_support import context, open_socket, register, ws_url
from tests.integration.test_feed import client, fast_pings  # noqa: F401 - a fixture
from usecases.clips import renew_lease, start_attempt


async def _start(pool: asyncpg.Pool, project: str, user: str, clip: str) -> None:
    await register(pool, project, user, clip=clip)
    await start_attempt(pool, project, clip, Start(run=1, attempt=1, worker_id="w"), context)


def _message(project: str, clip: str, percent: float, attempt: int = 1) -> progress.ProgressMessage:
    return progress.ProgressMessage(
        project_id=project, clip_id=clip, run=1, attempt=attempt, percent=percent, eta_seconds=3.0
    )


async def test_progress_is_written_for_the_leased_attempt_only_and_read_back(pool, ids, make_user):
    user, _ = await make_user()
    project = ids.project()
    await _start(pool, project, user, "c1")
    assert await progress.record(pool, _message(project, "c1", 42.0), speed=2.5)
    assert not await progress.record(pool, _message(project, "c1", 50.0, attempt=2), speed=2.5)  # not its lease
    read = await progress.read(pool, project, [("c1", 1, 1)])
    assert (read["c1"].percent, read["c1"].speed, read["c1"].eta_seconds) == (42.0, 2.5, 3.0)
    assert await progress.read(pool, project, [("c1", 1, 2)]) == {}
    # Another attempt taking the lease row starts without the previous attempt's progress.
    state = await clip_status.load(pool, project, "c1")
    await pool.execute("UPDATE clips SET attempt = 2 WHERE project_id = $1 AND clip_id = $2", project, "c1")
    assert await renew_lease(pool, msgspec.structs.replace(state, attempt=2), "w2")
    assert await progress.read(pool, project, [("c1", 1, 2)]) == {}


async def _until(ws: ClientConnection, predicate, timeout: float = 10) -> list[dict]:  # noqa: ANN001
    """Messages until one satisfies `predicate` (included)."""
    got: list[dict] = []
    async with asyncio.timeout(timeout):
        while not got or not predicate(got[-1]):
            got.append(json.loads(await ws.recv()))
    return got


async def test_progress_reaches_only_sockets_that_may_see_the_project_and_get_clip_shows_it(
    api_server, pool, ids, make_user, fast_pings  # noqa: F811
):
    alice, alice_token = await make_user()
    bob, bob_token = await make_user()
    mine, other_of_mine, bobs = ids.project(), ids.project(), ids.project()
    await register(pool, other_of_mine, alice)
    await register(pool, bobs, bob)
    await _start(pool, mine, alice, "run")
    base = api_server.ws_url
    got_progress: list[dict] = []
    caught_up: list[str] = []
    feed = FeedClient(api_server.url, alice_token, after="latest", on_progress=got_progress.append,
                      on_caught_up=caught_up.append)  # fmt: skip
    events: list[dict] = []

    async def follow() -> None:
        async for event in feed.events():
            events.append(event)

    following = asyncio.create_task(follow())
    try:
        async with (
            await open_socket(ws_url(base, alice_token, after="latest")) as everything,
            await open_socket(ws_url(base, alice_token, after="latest", project_id=other_of_mine)) as filtered,
            await open_socket(ws_url(base, bob_token, after="latest")) as someone_else,
        ):
            for ws in (everything, filtered, someone_else):
                await _until(ws, lambda m: m["type"] == "caught_up")
            async with asyncio.timeout(10):
                while not caught_up:
                    await asyncio.sleep(0.02)
            assert await progress.record(pool, _message(mine, "run", 42.0), speed=2.5)
            seen = await _until(everything, lambda m: m["type"] == "progress")
            assert seen[-1] == {"type": "progress", "project_id": mine, "clip_id": "run", "run": 1, "attempt": 1,
                                "percent": 42.0, "eta_seconds": 3.0}  # fmt: skip
            # The others: an event of their own, then a ping: had progress been pending, it would have come with
            # the event (a wake-up sends the events, then the progress), before the next silence.
            await register(pool, other_of_mine, alice)
            await register(pool, bobs, bob)
            for ws in (filtered, someone_else):
                after = await _until(ws, lambda m: m["type"] == "ping")
                assert [m["type"] for m in after if m["type"] != "ping"] == ["event"], after
            async with asyncio.timeout(10):
                while not got_progress or not events:
                    await asyncio.sleep(0.02)
            assert got_progress[-1]["percent"] == 42.0 and "cursor" not in got_progress[-1]
            assert len(caught_up) == 1 and [e["project_id"] for e in events] == [other_of_mine]
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)

    async with client(api_server, alice_token) as http:
        view = (await http.get(f"/api/clips/projects/{mine}/clips/run")).json()
        assert view["status"] == "running" and view["queue_position"] is None
        assert {k: view["progress"][k] for k in ("percent", "speed", "eta_seconds")} == {
            "percent": 42.0, "speed": 2.5, "eta_seconds": 3.0
        }
        listed = (await http.get(f"/api/clips/projects/{mine}/clips")).json()
        assert listed[0]["progress"] == view["progress"]
        pending = (await http.get(f"/api/clips/projects/{other_of_mine}/clips")).json()
        assert all(c["progress"] is None and isinstance(c["queue_position"], int) for c in pending)


async def test_queue_positions_count_the_due_attempts_ahead_in_dispatch_order(make_database, ids):
    """On a log of its own (only these clips wait): alice's three clips, then bob's one. Fair dispatch takes the
    users in turn (alice's oldest, bob's, then alice's); first come, first served takes them in request order."""
    async with asyncpg.create_pool(await make_database(migrated=True), init=init_connection) as pool:
        alice, bob = ids.project(), ids.project()
        for clip in ("a", "b", "c"):
            await register(pool, alice, "alice", clip=clip)
        await register(pool, bob, "bob", clip="x")
        fair = await queue.queue_positions(pool, alice, ["a", "b", "c"]) | await queue.queue_positions(pool, bob, ["x"])
        assert fair == {"a": 0, "x": 1, "b": 2, "c": 3}
        fifo = await queue.queue_positions(pool, alice, ["a", "b", "c"], fair=False)
        assert fifo == {"a": 0, "b": 1, "c": 2}
        assert await queue.queue_positions(pool, bob, ["x"], fair=False) == {"x": 3}
        await start_attempt(pool, alice, "a", Start(run=1, attempt=1, worker_id="w"), context)
        after = await queue.queue_positions(pool, alice, ["a", "b", "c"]) | await queue.queue_positions(pool, bob, ["x"])
        assert after == {"x": 0, "b": 1, "c": 2}  # alice has one running: bob's goes first
        estimate = await queue.estimate(pool, alice, ["b", "c"])
        assert estimate.running == 1 and estimate.typical_seconds is None and estimate.eta_seconds("b") is None


@pytest.mark.parametrize("ahead,running,expected", [(0, 0, 2.0), (3, 2, 4.0), (4, 2, 6.0)])
def test_the_queue_eta_counts_batches_of_running_attempts(ahead: int, running: int, expected: float) -> None:
    assert queue.QueueEstimate({"c": ahead}, 2.0, running).eta_seconds("c") == expected
    assert queue.QueueEstimate({"c": ahead}, None, running).eta_seconds("c") is None
    assert queue.QueueEstimate({}, 2.0, running).eta_seconds("c") is None
