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


# The decision itself (cliplog_horizon_of, migrations/017), on lock tables as PostgreSQL showed them ------------------

DATABASE = 16969


def advisory(vxid: str, pid: int | None, database: int = DATABASE) -> tuple:
    """The appenders' shared lock (72619) as a row of pg_locks."""
    return ("advisory", database, 0, 72619, 1, "ShareLock", True, None, vxid, pid)


def holds_xid(xid: int, vxid: str, pid: int | None) -> tuple:
    """A transaction's exclusive lock on its own id as a row of pg_locks."""
    return ("transactionid", None, None, None, None, "ExclusiveLock", True, xid, vxid, pid)


async def horizon_of(pool: asyncpg.Pool, snapshot: str, locks: list[tuple], prepared_elsewhere: list[int] = []) -> int:
    return int(await pool.fetchval(
        "SELECT cliplog_horizon_of($1::text::pg_snapshot, $2::cliplog_lock[], $3, $4::xid[])::text",
        snapshot, locks, DATABASE, prepared_elsewhere,
    ))


async def test_an_appender_committing_while_pg_locks_is_read_still_holds_the_horizon(pool):
    """One read of pg_locks caught under heavy load (PostgreSQL 16, 8 writers committing out of order; the reader then
    skipped events 6292-6293 of transaction 94064 for good). Backend 19391 was committing transaction 94064, an
    appender of the reader's snapshot: PostgreSQL clears a backend's local transaction id when the transaction leaves
    the ProcArray, before it releases its locks, and pg_locks reads that id from the live backend while it copies the
    lock table, without a lock the committing backend takes. So the one read showed 19391's two locks under two
    virtual transaction ids, `12/7831` and `12/0`. Matched by virtual transaction id, 94064 looked like a transaction
    that does not append and was left out of the horizon; matched by backend, it holds the horizon back."""
    snapshot = "94064:94071:94064,94067,94068"
    locks = [
        holds_xid(94064, "12/7831", 19391), advisory("12/0", 19391),  # committing: its rows are not in the snapshot
        holds_xid(94067, "7/7797", 19385), advisory("7/7797", 19385),  # appending, as the snapshot saw it
        holds_xid(94068, "13/7746", 19395), advisory("13/7746", 19395),
        holds_xid(94073, "9/7797", 19389), advisory("9/7797", 19389),  # newer than the snapshot
    ]
    assert await horizon_of(pool, snapshot, locks) == 94064


async def test_the_horizon_passes_only_transactions_that_cannot_append(pool):
    snapshot = "100:110:100,103,107"
    locks = [
        holds_xid(100, "3/40", 501),  # an operator's open write transaction: it already has an id, it never appends
        holds_xid(103, "4/41", 502), advisory("4/41", 502),  # an appender
        holds_xid(107, "5/9", 503), advisory("5/9", 503, database=DATABASE + 1),  # an appender of another database
    ]
    assert await horizon_of(pool, snapshot, locks) == 103
    assert await horizon_of(pool, snapshot, locks[:2] + locks[3:]) == 110  # 103 does not append either: the xmax
    # 103 has finished meanwhile (neither of its locks is left): it may have appended rows this snapshot cannot see
    assert await horizon_of(pool, snapshot, [locks[0]] + locks[3:]) == 103
    # the same backend's locks under two virtual transaction ids (it is committing): still one appender
    assert await horizon_of(pool, snapshot, [locks[0], holds_xid(103, "4/0", 502), advisory("4/41", 502)]) == 103
    assert await horizon_of(pool, snapshot, [locks[0], holds_xid(103, "4/41", 502), advisory("4/0", 502)]) == 103


async def test_a_prepared_transaction_holds_the_horizon_back_unless_it_belongs_to_another_database(pool):
    snapshot = "100:110:100,105"
    operator = holds_xid(100, "3/40", 501)
    prepared = holds_xid(105, "-1/105", None)  # pg_locks shows no pid for a prepared transaction
    assert await horizon_of(pool, snapshot, [operator, prepared]) == 105
    assert await horizon_of(pool, snapshot, [operator, prepared, advisory("-1/105", None)]) == 105
    assert await horizon_of(pool, snapshot, [operator, prepared], prepared_elsewhere=[105]) == 110
    # PREPARE moves a transaction's locks partition by partition: one read can show its lock on its id still under
    # its backend and the appenders' lock already under the prepared transaction, or the other way round
    assert await horizon_of(pool, snapshot, [operator, holds_xid(105, "7/3", 507), advisory("-1/105", None)]) == 105
    assert await horizon_of(pool, snapshot, [operator, prepared, advisory("7/3", 507)]) == 105
