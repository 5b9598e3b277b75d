"""Poison events (issue 10, item 7): a row of the log this code cannot decode (an unknown type, bad data, a newer
schema version) is never skipped. The reactor stops just before it, says so once in the log and in health, and
goes on by itself once the row can be read; the replay fold stops at it with its position; the feed serves it
and everything after it. Real PostgreSQL and Redis; the API under uvicorn in this process."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from domain import events as ev
from eventlog import cursor, store
from handlers import reactor
from projections.replay import replay
from runtime.bootstrap import open_services
from runtime.settings import Settings
from tests.feed_support import register
from usecases.services import Services

DEADLINE = (datetime.now(timezone.utc) + timedelta(minutes=10)).isoformat()
STARTED = {"run": 1, "attempt": 1, "worker_id": "w", "deadline_at": DEADLINE}
POISONS = {
    "unknown type": ("extraction.exploded", 1, {"run": 1, "attempt": 1}),
    "bad data": ("extraction.started", 1, {"run": "one", "attempt": 1}),
    "newer version": ("extraction.started", 2, STARTED),
}


@pytest_asyncio.fixture(loop_scope="session")
async def services(database_url: str, redis_url: str) -> AsyncIterator[Services]:
    opened = await open_services(Settings(database_url=database_url, redis_url=redis_url), pool_size=4)
    try:
        yield opened
    finally:
        await opened.close()


async def append_raw(pool, project: str, clip: str, event_type: str, version: int, data: dict) -> int:  # noqa: ANN001
    """A row as another version of cliplog could have written it (store.append only writes what this one knows)."""
    stream, at = f"{project}/{clip}", datetime.now(timezone.utc)
    async with pool.acquire() as conn, conn.transaction():
        position = await conn.fetchval(
            store._APPEND_ONE, stream, project, clip, event_type, 0, at, version, data, "running",  # noqa: SLF001
            cursor.stored_fingerprint(stream, 1, at),
        )
    return position


async def job_exists(services: Services, project: str, clip: str) -> bool:
    queue = await reactor.job_queue(services.pool)
    return bool(await services.redis.exists(f"arq:job:{queue.job_id(project, clip, 1, 1)}"))  # type: ignore[union-attr]


async def health(api_server) -> dict:  # noqa: ANN001
    async with httpx.AsyncClient(base_url=api_server.url) as http:
        return (await http.get("/api/extraction/health")).json()


@pytest.mark.parametrize("kind", sorted(POISONS))
async def test_the_reactor_stops_at_a_poison_event_and_says_so_once(
    kind, services, pool, ids, make_user, api_server, clean_db, caplog
):
    user, token = await make_user()
    project = ids.project()
    before, after = ids.clip(), ids.clip()
    await register(pool, project, user, clip=before)
    poison = await append_raw(pool, project, ids.clip(), *POISONS[kind])
    await register(pool, project, user, clip=after)

    with caplog.at_level(logging.ERROR, logger="cliplog.reactor"):
        assert await reactor.react_once(services) == 0
        assert await reactor.react_once(services) == 0  # tried again: still stopped, not logged again
    assert await job_exists(services, project, before) and not await job_exists(services, project, after)
    checkpoint = await pool.fetchval("SELECT position FROM checkpoints WHERE name = 'reactor'")
    assert checkpoint == poison - 1
    stopped = [r for r in caplog.records if "reactor stopped before event" in r.getMessage()]
    assert len(stopped) == 1 and str(poison) in stopped[0].getMessage()

    body = await health(api_server)
    assert body["status"] == "degraded" and body["reactor"]["stopped_at"] == poison
    assert body["reactor"]["stopped_reason"] and body["reactor"]["lag_events"] >= 2

    async with httpx.AsyncClient(base_url=api_server.url, headers={"Authorization": f"Bearer {token}"}) as http:
        page = (await http.get("/api/events", params={"project_id": project})).json()
    assert [e["position"] for e in page["events"]][-2:] == [poison, poison + 1]  # the feed serves it and the rest

    events = [e async for e in _all(pool)]
    with pytest.raises(ev.UndecodableEvent, match=f"event {poison} "):
        list(replay(events))


async def _all(pool) -> AsyncIterator[store.StoredEvent]:  # noqa: ANN001
    position = 0
    while batch := await store.read_after(pool, position, 1000):
        for event in batch:
            yield event
        position = batch[-1].position


async def test_the_reactor_goes_on_once_the_event_can_be_read(
    services, pool, ids, make_user, api_server, clean_db, monkeypatch
):
    user, _ = await make_user()
    project, after = ids.project(), ids.clip()
    poison = await append_raw(pool, project, ids.clip(), *POISONS["newer version"])
    await register(pool, project, user, clip=after)
    assert await reactor.react_once(services) == 0
    assert (await health(api_server))["reactor"]["stopped_at"] == poison

    # This process becomes the "upgraded" version that knows extraction.started v2 (and reads v1 as v2).
    monkeypatch.setitem(ev.SCHEMA_VERSION, "extraction.started", 2)
    monkeypatch.setitem(ev.UPCASTERS, ("extraction.started", 1), lambda data: data)
    assert await reactor.react_once(services) == 2
    assert await job_exists(services, project, after)
    assert await pool.fetchval("SELECT position FROM checkpoints WHERE name = 'reactor'") == poison + 1
    monkeypatch.undo()  # the API in this process reads health with the registries as they were
    body = await health(api_server)
    assert body["reactor"]["stopped_at"] is None and body["reactor"]["stopped_reason"] is None
