"""The Python feed client (`api/feed_client.py`, behind `cliplog tail`) against the real app: it resumes from its
cursor across an API restart, polling meanwhile, and yields every event once, in order."""

from __future__ import annotations

import asyncio

import pytest

from api.feed_client import CursorReset, FeedClient, FeedError
from tests.feed_support import register
from tests.inprocess import InProcessServer


def test_backoff_is_exponential_with_jitter_and_capped():
    low = FeedClient("http://x", "t", backoff_base=0.5, backoff_max=30, rng=lambda: 0.0)
    high = FeedClient("http://x", "t", backoff_base=0.5, backoff_max=30, rng=lambda: 1.0)
    assert [low.delay(n) for n in (0, 1, 2, 3)] == [0.25, 0.5, 1.0, 2.0]
    assert [high.delay(n) for n in (0, 1, 2, 3)] == [0.5, 1.0, 2.0, 4.0]
    assert low.delay(100) == 15.0 and high.delay(100) == 30.0


async def test_the_client_resumes_across_an_api_restart_exactly_once(database_url, api_env, pool, ids, make_user):
    user, token = await make_user()
    project = ids.project()
    first = await register(pool, project, user)
    server = InProcessServer(api_env(database_url)).start()
    modes: list[str] = []
    client = FeedClient(server.url, token, project_id=project, backoff_base=0.05, backoff_max=0.3, poll_wait=0.5,
                        on_mode=modes.append)
    got: list[int] = []

    async def follow() -> None:
        async for event in client.events():
            got.append(event["position"])

    async def until(count: int) -> None:
        async with asyncio.timeout(20):
            while len(got) < count:
                await asyncio.sleep(0.02)

    following = asyncio.create_task(follow())
    restarted = None
    try:
        await until(1)  # the first event may come from the NDJSON catch-up, before the socket is up
        async with asyncio.timeout(20):
            while not modes or modes[-1] != "live":
                await asyncio.sleep(0.02)
        live_until = len(modes)
        await asyncio.to_thread(server.stop)  # its sockets close (1012); nothing answers on the port for a while
        second = await register(pool, project, user)  # appended while no API is up
        async with asyncio.timeout(20):  # the client has noticed: a poll of its failed to reach the API
            while "offline" not in modes[live_until:]:
                await asyncio.sleep(0.02)
        assert "live" not in modes[live_until:] and got == [first]
        restarted = InProcessServer(api_env(database_url), port=server.port).start()
        third = await register(pool, project, user)
        await until(3)
        async with asyncio.timeout(20):  # back on the socket
            while modes[-1] != "live":
                await asyncio.sleep(0.02)
        # nothing more, nothing twice: a marker appended now is the next (and only other) event to come
        marker = await register(pool, project, user)
        await until(4)
        assert got == [first, second, third, marker]
    finally:
        following.cancel()
        if restarted is not None:
            restarted.stop()


async def test_refusals_end_the_iteration(api_server, make_user, ids):
    _, token = await make_user()
    with pytest.raises(FeedError) as refused:
        async for _ in FeedClient(api_server.url, "nope").events():
            pass
    assert refused.value.status == 401
    with pytest.raises(FeedError) as hidden:
        async for _ in FeedClient(api_server.url, token, project_id=ids.project()).events():
            pass
    assert hidden.value.status == 404
    with pytest.raises(CursorReset):
        async for _ in FeedClient(api_server.url, token, after="AAAAAAAAAAAAAAAAAAAAAAAAAAA").events():
            pass
