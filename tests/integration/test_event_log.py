"""The event log on real PostgreSQL: optimistic appends, the gap-free reader, the clip repository, migrations."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime, timedelta, timezone

import asyncpg
import msgspec
import pytest

from domain.clip import ClipState, Complete, Context, Fail, Register, Retry, Start, TimeOut, decide, evolve
from domain.errors import StaleAttempt, VersionConflict
from domain.events import ExtractionRequested, ExtractionStarted
from eventlog import cursor, feed_json, store
from usecases import clips
from eventlog.migrate import MIGRATIONS_DIR, migrate
from projections import clip_status, rebuild

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def requested(run: int = 1, attempt: int = 1) -> ExtractionRequested:
    return ExtractionRequested(
        run=run, attempt=attempt, reason="registered", not_before=T0, source="games/match.mp4", start=1.0, end=2.0
    )


def started(run: int = 1, attempt: int = 1, worker: str = "w1") -> ExtractionStarted:
    return ExtractionStarted(run=run, attempt=attempt, worker_id=worker, deadline_at=T0 + timedelta(minutes=10))


async def append(conn, project_id, clip_id, expected_version, events):
    return await store.append(
        conn,
        project_id=project_id,
        clip_id=clip_id,
        expected_version=expected_version,
        events=[(e, "pending") for e in events],
        recorded_at=T0,
    )


async def eventually(check, timeout: float = 10.0):
    """Await `check()` until it returns something true (or `timeout` passes, returning the last result). The safe
    horizon waits for every transaction of this database still running, such as an autovacuum's ANALYZE, which may
    hold it back for a moment after a commit."""
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        if time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.01)
    return result


async def no_differences(pool) -> bool:
    async with pool.acquire() as conn:
        return await rebuild.rebuild_differences(conn) == {}


async def count(pool, stream: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM events WHERE stream = $1", stream)


# Appends ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("existing", [0, 2], ids=["new-stream", "existing-stream"])
async def test_two_appends_at_the_same_expected_version_one_wins(pool, connect, ids, existing):
    project, clip = ids.project(), ids.clip()
    stream = store.stream_name(project, clip)
    if existing:
        async with pool.acquire() as conn, conn.transaction():
            await append(conn, project, clip, 0, [requested(), started()][:existing])
    a, b = await connect(), await connect()
    both_appended = asyncio.Barrier(2)

    async def writer(conn, worker):
        async with conn.transaction():
            appending = asyncio.ensure_future(append(conn, project, clip, existing, [started(worker=worker)] * 2))
            # Hold the transaction open until both inserts are on their way, so that they truly overlap: the second
            # waits on the first one's uncommitted (stream, version) index entry.
            await asyncio.wait([appending], timeout=0.2)
            await both_appended.wait()
            return await appending

    results = await asyncio.gather(writer(a, "A"), writer(b, "B"), return_exceptions=True)
    winners = [r for r in results if isinstance(r, list)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert isinstance(losers[0], VersionConflict), losers[0]
    assert losers[0].extra == {"stream": stream, "expected_version": existing}
    assert [e.version for e in winners[0]] == [existing + 1, existing + 2]
    # the loser wrote nothing: only the winner's two events follow the existing ones
    assert await count(pool, stream) == existing + 2
    rows = await pool.fetch("SELECT version, data FROM events WHERE stream = $1 ORDER BY version", stream)
    assert [r["version"] for r in rows] == list(range(1, existing + 3))
    assert {r["data"]["worker_id"] for r in rows[existing:]} == {winners[0][0].data["worker_id"]}


async def test_append_outside_a_transaction_is_refused(pool, ids):
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            await append(conn, ids.project(), ids.clip(), 0, [requested()])


async def test_append_must_be_the_first_write_of_its_transaction(pool, ids):
    project, clip = ids.project(), ids.clip()
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.RaiseError, match="first write"):
            async with conn.transaction():
                await conn.execute("CREATE TEMP TABLE scratch (x int) ON COMMIT DROP")
                await conn.execute("INSERT INTO scratch VALUES (1)")
                await append(conn, project, clip, 0, [requested()])
    assert await count(pool, store.stream_name(project, clip)) == 0


async def test_stored_events_decode_to_what_was_appended(pool, ids):
    project, clip = ids.project(), ids.clip()
    events = [requested(), started()]
    async with pool.acquire() as conn, conn.transaction():
        appended = await append(conn, project, clip, 0, events)
    read = await store.read_stream(pool, project, clip)
    assert read == appended
    assert [e.decoded() for e in read] == events
    assert [e.version for e in read] == [1, 2]
    assert read[1].position == read[0].position + 1


async def test_every_append_writes_the_feeds_json_the_feed_would_build(pool, ids):
    """One event, several at once, and the bulk append of an import each write `feed_print`, `feed_tail` and
    `feed_fingerprint`, and they are the text the feed builds at read time for a row without them
    (eventlog/feed_json.py) and the fingerprint `eventlog.cursor` computes from the row, also when the writer's
    session is in another time zone than the reader's (UTC here)."""
    project, clip = ids.project(), ids.clip()
    elsewhere = "SET LOCAL TIME ZONE 'Asia/Kathmandu'"  # +05:45: neither whole hours nor the reader's zone
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(elsewhere)
        await append(conn, project, clip, 0, [requested()])
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(elsewhere)
        await append(conn, project, clip, 1, [started(), requested()])
    # a time given in another zone, with microseconds: its fingerprint is that of the instant as read back, in UTC
    at = datetime(2026, 12, 1, 3, 4, 5, 60, tzinfo=timezone(timedelta(hours=-3, minutes=-30)))
    async with pool.acquire() as conn, conn.transaction():
        await store.append(conn, project_id=project, clip_id=clip, expected_version=3, events=[(started(), "running")],
                           recorded_at=at)  # fmt: skip
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(elsewhere)
        lines = await conn.fetch(f"SELECT {store.ROW_JSON} FROM events WHERE project_id = $1 ORDER BY position", project)
        imported = ids.project()
        await store.append_rows(conn, len(lines), (line[0].encode() for line in lines), project_id=imported)
    rows = await pool.fetch(
        f"SELECT feed_print, feed_tail, {feed_json.ROW_PRINT} AS built_print, {feed_json.ROW_TAIL} AS built_tail, "
        "feed_fingerprint, stream, version, recorded_at FROM events WHERE project_id = ANY($1::text[]) "
        "ORDER BY position",
        [project, imported],
    )
    assert len(rows) == 8
    for row in rows:
        assert (row["feed_print"], row["feed_tail"]) == (row["built_print"], row["built_tail"])
        # and the cursor's fingerprint as the feed computes it from the row (migrations/019)
        fingerprint = cursor.fingerprint(row["stream"], row["version"], row["recorded_at"])
        assert row["feed_fingerprint"] is not None and row["feed_fingerprint"] % 2**32 == fingerprint


# The gap-free reader --------------------------------------------------------------------------------------------------


async def test_the_reader_sees_every_event_once_in_order_although_commits_land_out_of_order(pool, connect, clean_db):
    writers, events_per_writer = 8, 50
    rng = random.Random(20261128)
    commit_order: list[int] = []  # first position of each transaction, in the order its COMMIT returned
    done = asyncio.Event()

    async def writer(n: int) -> None:
        conn = await connect()
        project, clip, version = f"gap-{n}", "c", 0
        while version < events_per_writer:
            batch = min(rng.randint(1, 3), events_per_writer - version)
            async with conn.transaction():
                appended = await append(conn, project, clip, version, [requested()] * batch)
                await asyncio.sleep(rng.uniform(0, 0.05))  # commit late, after others that allocated after us
            commit_order.append(appended[0].position)
            version += batch

    async def reader() -> list[int]:
        seen: list[int] = []
        last = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batch = await store.read_after(pool, last, rng.randint(1, 25))
            seen.extend(e.position for e in batch)
            if batch:
                last = batch[-1].position
                continue
            if done.is_set() and last == await pool.fetchval("SELECT coalesce(max(position), 0) FROM events"):
                return seen
            await asyncio.sleep(0.002)
        raise AssertionError(f"the reader did not catch up (at {last})")

    async def write_all() -> None:
        try:
            await asyncio.gather(*(writer(n) for n in range(writers)))
        finally:
            done.set()

    seen, _ = await asyncio.gather(reader(), write_all())

    everything = [r["position"] for r in await pool.fetch("SELECT position FROM events ORDER BY position")]
    assert len(everything) == writers * events_per_writer
    assert seen == everything  # every event, once each, in position order
    assert all(a < b for a, b in zip(seen, seen[1:]))
    # The scenario really happened: transactions committed in an order other than their positions'.
    assert commit_order != sorted(commit_order)


async def test_a_naive_reader_skips_an_event_whose_transaction_commits_late(pool, connect, ids):
    """Proves the scenario above is real: without the snapshot horizon, a late commit is lost to a follower."""
    project = ids.project()
    a, b = await connect(), await connect()
    tx_a, tx_b = a.transaction(), b.transaction()
    start = await pool.fetchval("SELECT coalesce(max(position), 0) FROM events")

    async def naive_read_after(position: int) -> list[int]:
        rows = await pool.fetch(
            "SELECT position FROM events WHERE position > $1 AND project_id = $2 ORDER BY position", position, project
        )
        return [r["position"] for r in rows]

    async def safe_read_after(position: int) -> list[int]:
        return [e.position for e in await store.read_after(pool, position, 100, [project])]

    await tx_a.start()
    (first,) = await append(a, project, "a", 0, [requested()])  # A allocates first ...
    await tx_b.start()
    (second,) = await append(b, project, "b", 0, [requested()])
    await tx_b.commit()  # ... but B commits first
    assert first.position < second.position

    naive = await naive_read_after(start)
    assert naive == [second.position]
    safe = await safe_read_after(start)
    assert safe == []  # the safe reader waits: A, below B, may still commit

    await tx_a.commit()
    assert await naive_read_after(naive[-1]) == []  # the naive follower has skipped A's event for good
    both = [first.position, second.position]
    assert await eventually(lambda: _equals(safe_read_after(start), both))


async def test_a_write_transaction_in_another_database_does_not_hold_the_reader_back(pool, admin_url, ids):
    """pg_snapshot_xmin is server-wide; the log's horizon must ignore transactions of other databases."""
    project = ids.project()
    other = await asyncpg.connect(admin_url)
    try:
        foreign = other.transaction()
        await foreign.start()
        await other.fetchval("SELECT pg_current_xact_id()")  # holds a transaction id until rolled back
        start = await pool.fetchval("SELECT coalesce(max(position), 0) FROM events")
        async with pool.acquire() as conn:
            async with conn.transaction():
                (event,) = await append(conn, project, "c", 0, [requested()])
        async def seen() -> list[int]:
            return [e.position for e in await store.read_after(pool, start, 100, [project])]

        assert await eventually(lambda: _equals(seen(), [event.position]), timeout=2)
        assert await store.head_position(pool) >= event.position
        await foreign.rollback()
    finally:
        await other.close()


# The clip repository ----------------------------------------------------------------------------------------------------


async def _equals(coroutine, expected) -> bool:
    return await coroutine == expected


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc).replace(microsecond=0)
        self.calls = 0

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def __call__(self) -> Context:
        self.calls += 1
        return Context(now=self.now, jitter=0.5)


REGISTER = Register(source="games/match.mp4", start=300.0, end=310.0, name="Brilliant pass")
COMPLETE = Complete(run=1, attempt=1, bytes=1234, duration_seconds=10.0, elapsed_seconds=0.08, output="c.mp4")


async def test_handle_register_start_complete_matches_a_rebuild(pool, ids, clean_db):
    project, clip = ids.project(), ids.clip()
    clock = Clock()
    registered = await clips.handle(pool, project, clip, REGISTER, clock)
    assert registered.state.status == "pending" and len(registered.appended) == 1
    clock.advance(1)
    running = await clips.handle(pool, project, clip, Start(run=1, attempt=1, worker_id="w1"), clock)
    assert running.state.status == "running"
    clock.advance(1)
    done = await clips.handle(pool, project, clip, COMPLETE, clock)
    assert done.state.status == "completed" and done.state.version == 3

    row = await pool.fetchrow("SELECT * FROM clips WHERE project_id = $1 AND clip_id = $2", project, clip)
    assert (row["status"], row["version"], row["run"], row["attempt"], row["position"]) == (
        "completed",
        3,
        1,
        1,
        done.position,
    )
    assert await clip_status.load(pool, project, clip) == done.state
    history = await store.read_stream(pool, project, clip)
    assert [e.type for e in history] == ["extraction.requested", "extraction.started", "extraction.completed"]
    assert [e.clip_status for e in history] == ["pending", "running", "completed"]
    assert history[-1].position == done.position
    assert await eventually(lambda: no_differences(pool))

    # Registering again with the same fields appends nothing.
    again = await clips.handle(pool, project, clip, REGISTER, clock)
    assert again.appended == [] and again.state == done.state and again.position == done.position
    assert len(await store.read_stream(pool, project, clip)) == 3


async def test_a_rebuild_notices_a_projection_row_that_differs_from_the_log(pool, ids, clean_db):
    project, clip = ids.project(), ids.clip()
    await clips.handle(pool, project, clip, REGISTER, Clock())
    await pool.execute(
        "UPDATE clips SET state = jsonb_set(state::jsonb, '{status}', '\"failed\"') WHERE project_id = $1", project
    )
    async with pool.acquire() as conn:
        assert await rebuild.rebuild_differences(conn) == {"different": [(project, clip)]}


async def test_a_row_written_while_the_state_was_jsonb_reads_and_checks_as_the_same_state(pool, ids, clean_db):
    """migrations/020 turned the state's jsonb into json as jsonb prints it (its key order, spaces): such a row is
    read as the same state and a rebuild's check finds no drift in it."""
    project, clip = ids.project(), ids.clip()
    registered = await clips.handle(pool, project, clip, REGISTER, Clock())
    await pool.execute("UPDATE clips SET state = state::jsonb::json WHERE project_id = $1", project)
    text = await pool.fetchval("SELECT state::text FROM clips WHERE project_id = $1", project)
    assert text.startswith('{"end": ') and text != msgspec.json.encode(registered.state).decode()  # the old form
    assert await clip_status.load(pool, project, clip) == registered.state
    async with pool.acquire() as conn:
        assert await rebuild.rebuild_differences(conn) == {}


async def test_the_fold_reads_a_page_whose_stream_holds_a_newline_or_a_separator_as_records(pool, clean_db):
    """The fold's text pages (`_read_text`) split on newlines and \\x02, which ids may hold: such a page is read as
    Records, and every page gives what `_read_records` gives."""
    at = datetime(2026, 11, 1, 0, 0, 1, 500, tzinfo=timezone.utc)
    odd = ["plain", "new\nline", "sep\x02arated", "both\n\x02"]
    positions = []
    async with pool.acquire() as conn:
        for clip in odd:
            events = decide(ClipState(project_id="odd", clip_id=clip), REGISTER, Context(now=at))
            async with conn.transaction():
                stored = await store.append(conn, project_id="odd", clip_id=clip, expected_version=0,
                                            events=[(e, "pending") for e in events], recorded_at=at)  # fmt: skip
            positions.append(stored[-1].position)
        for after, upto in [(0, positions[0]), *zip(positions, positions[1:]), (0, positions[-1])]:
            text = await rebuild._read_text(conn, after, upto)
            assert [tuple(r) for r in text] == [tuple(r) for r in await rebuild._read_records(conn, after, upto)]
        assert type((await rebuild._read_text(conn, 0, positions[0]))[0]) is tuple  # the plain page, as text
        folded: dict = {}
        await rebuild.fold(conn, folded, 0, positions[-1])
        await conn.execute("SET DateStyle = 'SQL, DMY'")  # times printed as 01/11/2026 00:00:01.0005 UTC
        try:
            again: dict = {}
            await rebuild.fold(conn, again, 0, positions[-1])
        finally:
            await conn.execute("RESET DateStyle")
    assert sorted(state.clip_id for state, _ in folded.values()) == sorted(odd)
    assert again == folded and all(state.created_at == at for state, _ in folded.values())


async def test_a_late_complete_for_a_timed_out_attempt_is_stale_and_appends_nothing(pool, ids, clean_db):
    project, clip = ids.project(), ids.clip()
    clock = Clock()
    await clips.handle(pool, project, clip, REGISTER, clock)
    await clips.handle(pool, project, clip, Start(run=1, attempt=1, worker_id="w1"), clock)
    clock.advance(700)
    timed_out = await clips.handle(pool, project, clip, TimeOut(run=1, attempt=1, detected_by="reaper", reason="lease"), clock)
    assert (timed_out.state.status, timed_out.state.attempt) == ("retrying", 2)
    before = await store.read_stream(pool, project, clip)

    clock.advance(5)
    with pytest.raises(StaleAttempt):
        await clips.handle(pool, project, clip, COMPLETE, clock)
    with pytest.raises(StaleAttempt):
        await clips.handle(pool, project, clip, Fail(run=1, attempt=1, code="x", message="y", retryable=True), clock)
    assert await store.read_stream(pool, project, clip) == before
    assert await clip_status.load(pool, project, clip) == timed_out.state
    assert await eventually(lambda: no_differences(pool))


async def test_two_concurrent_starts_of_one_attempt_one_wins_the_other_is_stale(pool, ids):
    project, clip = ids.project(), ids.clip()
    clock = Clock()
    await clips.handle(pool, project, clip, REGISTER, clock)
    clock.calls = 0
    first_in = asyncio.Event()

    async def hold_the_transaction(conn, state) -> None:
        # The first writer to get here keeps its transaction open until the other one, having decided on the same
        # (old) state, waits on it in its append (the same stream version): it then runs into the version conflict
        # instead of simply arriving later.
        if not first_in.is_set():
            first_in.set()
            async with asyncio.timeout(10):
                while not await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", conn.get_server_pid()
                ):
                    await asyncio.sleep(0.01)

    results = await asyncio.gather(
        *(
            clips.handle(
                pool, project, clip, Start(run=1, attempt=1, worker_id=w), clock, after_append=hold_the_transaction
            )
            for w in ("w1", "w2")
        ),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, clips.Handled)]
    stale = [r for r in results if isinstance(r, BaseException)]
    assert len(wins) == 1 and len(stale) == 1, results
    assert isinstance(stale[0], StaleAttempt), stale[0]
    assert clock.calls == 3  # both decided on the pending state; the loser decided again after the conflict
    history = await store.read_stream(pool, project, clip)
    assert [e.type for e in history] == ["extraction.requested", "extraction.started"]
    assert history[-1].data["worker_id"] == wins[0].state.worker_id


async def test_a_double_click_retry_appends_one_new_run(pool, ids):
    project, clip = ids.project(), ids.clip()
    clock = Clock()
    await clips.handle(pool, project, clip, REGISTER, clock)
    await clips.handle(pool, project, clip, Start(run=1, attempt=1, worker_id="w1"), clock)
    fail = Fail(run=1, attempt=1, code="source_missing", message="gone", retryable=False)
    await clips.handle(pool, project, clip, fail, clock)
    results = await asyncio.gather(*(clips.handle(pool, project, clip, Retry(), clock) for _ in range(2)))
    assert sorted(len(r.appended) for r in results) == [0, 1]
    history = await store.read_stream(pool, project, clip)
    assert [(e.data["run"], e.data["attempt"], e.data.get("reason")) for e in history][-1] == (2, 1, "manual_retry")
    assert len(history) == 4


async def test_handle_and_a_pure_fold_agree(pool, ids):
    """The state `handle` stores equals folding the stored events through `evolve` (replay gives the same state)."""
    project, clip = ids.project(), ids.clip()
    clock = Clock()
    await clips.handle(pool, project, clip, REGISTER, clock)
    for attempt in (1, 2):
        await clips.handle(pool, project, clip, Start(run=1, attempt=attempt, worker_id="w"), clock)
        clock.advance(30)
        fail = Fail(run=1, attempt=attempt, code="ffmpeg_exit", message="exit 1", retryable=True)
        await clips.handle(pool, project, clip, fail, clock)
    stored = await clip_status.load(pool, project, clip)
    state = ClipState(project_id=project, clip_id=clip)
    for e in await store.read_stream(pool, project, clip):
        state = evolve(state, e.decoded(), e.recorded_at)
    assert state == stored
    assert (stored.status, stored.attempt) == ("retrying", 3)
    assert decide(stored, Retry(), Context(now=clock.now))  # a person may retry a retrying clip now


# Migrations ---------------------------------------------------------------------------------------------------------


ALL_MIGRATIONS = sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))


async def _applied(conn) -> list[str]:
    return [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")]


async def test_migrating_twice_is_a_no_op(make_database):
    conn = await asyncpg.connect(await make_database(migrated=False))
    try:
        assert await migrate(conn) == ALL_MIGRATIONS
        epoch = await store.epoch(conn)
        assert await migrate(conn) == []
        assert await _applied(conn) == ALL_MIGRATIONS
        assert await store.epoch(conn) == epoch
        assert await conn.fetchval("SELECT count(*) FROM log_identity") == 1
    finally:
        await conn.close()


async def test_the_session_database_is_fully_migrated(pool):
    async with pool.acquire() as conn:
        assert await migrate(conn) == []
        assert await _applied(conn) == ALL_MIGRATIONS


async def test_concurrent_migrations_from_two_connections_both_succeed(make_database):
    url = await make_database(migrated=False)
    conns = [await asyncpg.connect(url) for _ in range(2)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(results, key=len) == [[], ALL_MIGRATIONS]  # one applied everything, the other waited
        assert await _applied(conns[0]) == ALL_MIGRATIONS
        assert await conns[1].fetchval("SELECT count(*) FROM log_identity") == 1
        # and the schema works
        await store.init_connection(conns[1])
        async with conns[1].transaction():
            await append(conns[1], "p", "c", 0, [requested()])
    finally:
        for c in conns:
            await c.close()
