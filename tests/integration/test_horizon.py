"""The readers' safe horizon waits for appending transactions only (migrations/005), and health reports it.

Against the real app under uvicorn in this process (`api_server`) and real PostgreSQL: an operator's open write
transaction on another table does not hold the feed back (it did with the horizon of migrations/004 and with
pg_snapshot_xmin), while an open appending transaction still does, and health names its backend.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx

from usecases.clips import claim_project
from domain.clip import Complete, Start
from domain.events import ExtractionRequested
from eventlog import cursor, store
from usecases import clips
from eventlog.migrate import MIGRATIONS_DIR
from usecases.services import utcnow
from tests.feed_support import context, open_socket, receive_events, register, ws_url

BLOCKER_SECONDS = 30  # the operator's transaction stays open this long at most (or until the test is done)


async def old_horizon(pool: asyncpg.Pool) -> int:
    """The horizon of migrations/004, which readers used before 005 (created under another name, then dropped)."""
    definition = (MIGRATIONS_DIR / "004_safe_horizon.sql").read_text()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(definition.replace("cliplog_safe_horizon()", "cliplog_safe_horizon_004()"))
        try:
            return await conn.fetchval("SELECT cliplog_safe_horizon_004()")
        finally:
            await conn.execute("DROP FUNCTION cliplog_safe_horizon_004()")


def requested() -> ExtractionRequested:
    return ExtractionRequested(run=1, attempt=1, reason="registered", not_before=utcnow(), source="a.mp4", start=0.0,
                               end=1.0)


async def from_the_start(pool: asyncpg.Pool) -> str:
    """A cursor at position 0 of this log: a new user's feed from it holds only what the test appends."""
    return cursor.encode(await store.epoch(pool), 0, 0)


async def complete_clip(pool: asyncpg.Pool, project: str, user: str, clip: str) -> int:
    """Register, start and complete a clip as the API and a worker do; the position of its `completed` event."""
    await register(pool, project, user, clip=clip)
    await clips.handle(pool, project, clip, Start(run=1, attempt=1, worker_id="w"), context)
    done = Complete(run=1, attempt=1, bytes=1, duration_seconds=1.0, elapsed_seconds=0.1, output=f"{clip}.mp4")
    return (await clips.handle(pool, project, clip, done, context)).position


async def health_feed(server) -> dict:  # noqa: ANN001
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.get("/api/extraction/health")
    assert response.status_code == 200, response.text
    return response.json()["feed"]


async def test_an_open_write_transaction_on_another_table_does_not_hold_the_feed_back(
    api_server, pool, connect, ids, make_user
):
    user, token = await make_user()
    project = ids.project()
    table = f"operator_{project.replace('-', '_')}"
    await pool.execute(f"CREATE TABLE {table} (x int)")
    operator = await connect()
    backfill = operator.transaction()
    await backfill.start()
    try:
        await operator.execute(f"INSERT INTO {table} VALUES (1)")  # BEGIN; UPDATE ... forgotten in psql
        blocker = await operator.fetchval("SELECT pg_current_xact_id()")
        opened = time.monotonic()
        async with await open_socket(ws_url(api_server.ws_url, token=token, after=await from_the_start(pool))) as ws:
            positions = [await complete_clip(pool, project, user, ids.clip()) for _ in range(3)]
            async with asyncio.timeout(BLOCKER_SECONDS):
                events = await receive_events(ws, positions[-1], timeout=BLOCKER_SECONDS)
        assert [e["type"] for e in events] == ["extraction.requested", "extraction.started", "extraction.completed"] * 3
        assert [e["position"] for e in events][2::3] == positions
        assert time.monotonic() - opened < BLOCKER_SECONDS
        assert await operator.fetchval("SELECT pg_current_xact_id()") == blocker  # still the same open transaction

        # The old horizons are stuck at the operator's transaction, below every event just delivered; ours passed them.
        newest = await pool.fetchval("SELECT max(txid) FROM events WHERE project_id = $1", project)
        assert blocker < newest
        assert await old_horizon(pool) <= blocker
        assert await pool.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())") <= blocker
        assert await pool.fetchval("SELECT cliplog_safe_horizon()") > newest
        assert await store.head_position(pool) >= positions[-1]
        assert await health_feed(api_server) == {"horizon_lag_seconds": 0.0, "held_by": None}
    finally:
        await backfill.rollback()
        await pool.execute(f"DROP TABLE {table}")


async def test_an_open_appending_transaction_holds_the_feed_back_and_health_names_it(
    api_server, database_url, pool, ids, make_user
):
    user, token = await make_user()
    project = ids.project()
    async with pool.acquire() as conn:
        await claim_project(conn, project, user)
    appender = await asyncpg.connect(database_url, server_settings={"application_name": "stuck-appender"})
    await store.init_connection(appender)
    try:
        appending = appender.transaction()
        await appending.start()
        (held,) = await store.append(  # appended, not committed
            appender, project_id=project, clip_id=ids.clip(), expected_version=0, events=[(requested(), "pending")],
            recorded_at=utcnow(),
        )
        held = held.position
        async with await open_socket(ws_url(api_server.ws_url, token=token, after=await from_the_start(pool))) as ws:
            later = await register(pool, project, user)  # committed, above the open one's position
            assert held < later

            feed = await health_feed(api_server)
            assert feed["horizon_lag_seconds"] > 0
            assert feed["held_by"]["pid"] == await appender.fetchval("SELECT pg_backend_pid()")
            assert feed["held_by"]["application_name"] == "stuck-appender"
            assert feed["held_by"]["xact_age"] > 0
            assert await store.read_after(pool, held - 1, 10, [project]) == []  # neither is readable yet

            await appending.commit()
            events = await receive_events(ws, later)
        assert [e["position"] for e in events] == [held, later]
        assert await health_feed(api_server) == {"horizon_lag_seconds": 0.0, "held_by": None}
    finally:
        await appender.close()
