"""`cliplog rebuild` over 100,000 events equals the live projection, also while writers append and the API serves
reads, and no request fails during the swap (reads and writes are made to wait on the swap's locks, seen in
pg_locks, and then finish against the new table)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import httpx
import pytest

from domain.clip import Complete, Context, Register, Retry, Start
from eventlog.store import init_connection
from projections import clip_status
from projections.rebuild import Finished, drift, fold, rebuild
from tests.histories import EVENTS_PER_CLIP, write_log
from usecases.clips import handle, register
from usecases.imports import import_file

CLIPS = 16_667  # 100,002 events


def now() -> Context:
    return Context(now=datetime.now(timezone.utc), jitter=0.5)


WRITER = "rebuild-test-writer"  # application_name of the writers' connections


async def waiting_locks(conn: asyncpg.Connection, table: str, mode: str, *, writers: bool | None = None) -> int:
    """Lock requests waiting on `table` in `mode` (only the writers', or only the others', when `writers` says)."""
    return await conn.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.relation = $1::regclass "
        "AND l.mode = $2 AND NOT l.granted AND ($3::boolean IS NULL OR (a.application_name = $4) = $3)",
        table, mode, writers, WRITER,
    )  # fmt: skip


async def until(check, what: str, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


@pytest.fixture
async def big_log(pool: asyncpg.Pool, clean_db: None, make_user, tmp_path: Path) -> tuple[str, str, str]:  # noqa: ANN001
    user, token = await make_user()
    path = tmp_path / "big.jsonl"
    count = write_log(path, clips=CLIPS, project="big", owner=user)
    async with pool.acquire() as conn:
        await import_file(conn, path)
    assert count == CLIPS * EVENTS_PER_CLIP >= 100_000
    return "big", user, token


async def live_equals_a_fold(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await drift(conn) == []
        folded: dict = {}
        await fold(conn, folded, 0, await conn.fetchval("SELECT max(position) FROM events"))
        rows = await conn.fetch("SELECT project_id, clip_id, state, position FROM clips")
    assert {f"{r['project_id']}/{r['clip_id']}": (clip_status.state_from_json(r["state"]), r["position"])
            for r in rows} == folded  # fmt: skip


DAMAGED = 4  # c0 .. c3: the clips whose rows the test damages (drift for the rebuild to repair)


def readable_clip(reader: int, nth: int) -> str:
    """An imported clip whose row is intact before the swap, so a 404 for it is the swap's fault. (Reading a damaged
    one, e.g. c2 whose row is deleted, 404s before the rebuild begins: that made this test fail now and then.)"""
    return f"c{DAMAGED + (reader * 7919 + nth) % (CLIPS - DAMAGED)}"


def test_readers_never_pick_a_damaged_clip() -> None:
    picked = {readable_clip(n, i) for n in range(4) for i in range(CLIPS)}
    assert picked.isdisjoint({"c1", "c2", "c3"}) and len(picked) == CLIPS - DAMAGED


async def test_a_rebuild_while_writers_append_and_reads_wait_on_the_swap(
    database_url: str, api_server, big_log, connect  # noqa: ANN001
) -> None:
    project, user, token = big_log
    pool = await asyncpg.create_pool(database_url, min_size=4, max_size=8, init=init_connection,
                                     server_settings={"application_name": WRITER})  # fmt: skip
    # drift for the rebuild to repair: a wrong status, a row lost, a row without events
    await pool.execute("UPDATE clips SET status = 'failed' WHERE project_id = $1 AND clip_id = 'c1'", project)
    await pool.execute("DELETE FROM clips WHERE project_id = $1 AND clip_id = 'c2'", project)
    await pool.execute("INSERT INTO clips SELECT 'ghost', clip_id, version, status, run, attempt, not_before, "
                       "deadline_at, status_since, position, created_at, updated_at, state FROM clips "
                       "WHERE project_id = $1 AND clip_id = 'c3'", project)  # fmt: skip
    async with pool.acquire() as conn:
        assert {(d.project_id, d.clip_id, d.kind) for d in await drift(conn)} == {
            (project, "c1", "different"), (project, "c2", "missing"), ("ghost", "c3", "extra")
        }

    stop = asyncio.Event()
    reads: list[tuple[float, float, int]] = []
    written: list[str] = []
    http = httpx.AsyncClient(base_url=api_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    async def reader(n: int) -> None:
        while not stop.is_set():
            started = time.monotonic()
            response = await http.get(f"/api/clips/projects/{project}/clips/{readable_clip(n, len(reads))}")
            reads.append((started, time.monotonic(), response.status_code))

    async def writer(n: int) -> None:
        """New clips through the whole path, and manual retries of imported ones (a version check against the
        table being swapped)."""
        for i in range(10_000):
            if stop.is_set():
                return
            clip = f"w{n}-{i}"
            await register(pool, project, clip, Register(source="a.mp4", start=0.0, end=1.0), now, user=user)
            await handle(pool, project, clip, Start(run=1, attempt=1, worker_id="w"), now)
            await handle(pool, project, clip, Complete(run=1, attempt=1, bytes=1, duration_seconds=1.0,
                                                       elapsed_seconds=0.1, output="o"), now)  # fmt: skip
            failed = 10 * (100 + n * 500 + i % 500)  # a failed imported clip (c1000 .. c15990)
            await handle(pool, project, f"c{failed}", Retry(), now)
            written.append(clip)

    # A reader's transaction holds clips open, so the swap's ACCESS EXCLUSIVE lock waits; what comes after it
    # (API reads, appenders) queues behind it, as at any swap that meets a busy table.
    holder = await connect()
    await holder.execute("BEGIN")
    await holder.fetchval("SELECT count(*) FROM clips WHERE project_id = 'none'")
    observer = await connect()
    readers = [asyncio.create_task(reader(n)) for n in range(4)]
    writers = [asyncio.create_task(writer(n)) for n in range(3)]
    await until(lambda: asyncio.sleep(0, len(written) >= 3 and len(reads) >= 20), "writers and readers to run")
    # An appender in the middle of its transaction (events and row written, not committed) as the swap begins:
    # the swap must wait for it, or the tail it folds misses these events and the row goes to the old table.
    inside, release = asyncio.Event(), asyncio.Event()

    async def pause(conn: asyncpg.Connection, state: object) -> None:
        inside.set()
        await release.wait()

    paused = asyncio.create_task(handle(pool, project, "c20", Retry(), now, after_append=pause))
    await inside.wait()
    rebuild_conn = await connect()
    rebuilding = asyncio.create_task(rebuild(rebuild_conn, connect=connect, clock=time.monotonic))  # rows copied on a 2nd
    pid = rebuild_conn.get_server_pid()
    await until(lambda: observer.fetchval("SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted", pid),
                "the swap to wait for the appender")  # fmt: skip
    release.set()
    assert (await paused).state.run == 2
    await until(lambda: waiting_locks(observer, "clips", "AccessExclusiveLock"), "the swap to wait for its lock")
    assert not rebuilding.done()
    # API reads (the in-process server's own pool) and appenders now wait behind the swap
    await until(lambda: waiting_locks(observer, "clips", "AccessShareLock", writers=False), "API reads to queue")
    await until(lambda: observer.fetchval(
        "SELECT count(DISTINCT pid) >= 3 FROM pg_locks JOIN pg_stat_activity USING (pid) "
        "WHERE NOT granted AND application_name = $1", WRITER), "every writer to wait")  # fmt: skip
    queued_at = time.monotonic()
    written_before = len(written)
    released_at = time.monotonic()  # the swap cannot end before this
    await holder.execute("COMMIT")
    done = await rebuilding
    assert done.events >= CLIPS * EVENTS_PER_CLIP and done.tail_under_lock >= 0
    # keep going a little after the swap, then stop
    await until(lambda: asyncio.sleep(0, len(written) >= written_before + 3), "writers to go on after the swap")
    stop.set()
    await asyncio.gather(*readers, *writers)
    await http.aclose()

    assert reads and all(status == 200 for _, _, status in reads), {s for _, _, s in reads}
    # in flight while the swap waited for its lock and swapped: begun before we saw them queue, ended after it let go
    overlapping = [r for r in reads if r[0] < queued_at and r[1] > released_at]
    assert done.swap_started < queued_at < released_at < done.swap_ended
    assert overlapping, "no read was in flight across the swap"
    assert len(written) > written_before
    await live_equals_a_fold(pool)
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT status, state FROM clips WHERE project_id = $1 AND clip_id = 'c1'", project)
        assert row["status"] == "completed" == row["state"]["status"]  # the drift was repaired
        c20 = await conn.fetchval("SELECT state FROM clips WHERE project_id = $1 AND clip_id = 'c20'", project)
        assert (c20["run"], c20["status"]) == (2, "pending")  # the appender caught mid-transaction
        assert await conn.fetchval("SELECT count(*) FROM clips WHERE project_id = 'ghost'") == 0
        # every write landed in the table now called clips (none in the one swapped out)
        assert await conn.fetchval(
            "SELECT count(*) FROM clips WHERE project_id = $1 AND clip_id = ANY($2::text[]) AND status = 'completed'",
            project, written,
        ) == len(written)  # fmt: skip
        names = {r["indexname"] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'clips'")}
        assert names == {"clips_pkey", "clips_unfinished"}
        assert await conn.fetchval("SELECT to_regclass('clips_rebuild')") is None
    await pool.close()


async def test_a_rebuild_racing_free_running_writers_and_reads(pool: asyncpg.Pool, api_server, big_log) -> None:  # noqa: ANN001
    """Without any lock held to line things up: writers and readers run throughout the rebuild."""
    project, user, token = big_log
    stop = asyncio.Event()
    statuses: list[int] = []
    count = [0]
    http = httpx.AsyncClient(base_url=api_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    async def reader() -> None:
        while not stop.is_set():
            statuses.append((await http.get(f"/api/clips/projects/{project}/clips")).status_code)

    async def writer(n: int) -> None:
        while not stop.is_set():
            count[0] += 1
            clip = f"f{n}-{count[0]}"
            await register(pool, project, clip, Register(source="a.mp4", start=0.0, end=1.0), now, user=user)
            await handle(pool, project, clip, Start(run=1, attempt=1, worker_id="w"), now)

    tasks = [asyncio.create_task(reader()) for _ in range(2)] + [asyncio.create_task(writer(n)) for n in range(3)]
    async with pool.acquire() as conn:
        before = count[0]
        done = await rebuild(conn, clock=time.monotonic)
    assert count[0] > before, "no writer appended during the rebuild"
    stop.set()
    await asyncio.gather(*tasks)
    await http.aclose()
    assert statuses and set(statuses) == {200}
    assert done.clips >= CLIPS
    await live_equals_a_fold(pool)


async def test_a_fold_hands_each_clip_over_once_its_last_version_is_folded(pool: asyncpg.Pool, big_log) -> None:  # noqa: ANN001
    """What lets `rebuild` copy rows on a second connection while it folds: once the streams' last versions are known,
    every clip whose last event is folded is handed over exactly once, with the state the whole fold gives it; a clip
    with an event past the fold's end is not (it is written after the fold)."""
    project, user, _ = big_log
    async with pool.acquire() as conn:
        upto = await conn.fetchval("SELECT max(position) FROM events")
        # c10 (failed) is retried after `upto`: its last version is past the fold's end
        await handle(pool, project, "c10", Retry(), now)
        last_versions = asyncio.ensure_future(conn.fetch("SELECT stream, max(version) FROM events GROUP BY stream"))
        await last_versions
        finished, folded = Finished(), {}
        await fold(conn, folded, 0, upto, finished=finished, last_versions=last_versions)
    finished.page_done()
    finished.pages.put_nowait(None)
    lines = b"".join([chunk async for chunk in finished.chunks()]).splitlines(keepends=True)
    assert len(folded) == CLIPS and finished.sent == folded.keys() - {f"{project}/c10"}
    assert sorted(lines) == sorted(clip_status.copy_line(*folded[s]) for s in finished.sent)


async def test_a_rebuild_with_a_second_connection_equals_one_without(pool: asyncpg.Pool, big_log, connect) -> None:  # noqa: ANN001
    project, _, _ = big_log
    async with pool.acquire() as conn:
        await conn.execute("UPDATE clips SET status = 'failed' WHERE project_id = $1 AND clip_id = 'c1'", project)
        one = await rebuild(conn, clock=time.monotonic)
        alone = await conn.fetch("SELECT * FROM clips ORDER BY project_id, clip_id")
        await conn.execute("UPDATE clips SET status = 'failed' WHERE project_id = $1 AND clip_id = 'c1'", project)
        two = await rebuild(conn, connect=connect, clock=time.monotonic)
        assert await conn.fetch("SELECT * FROM clips ORDER BY project_id, clip_id") == alone
    assert one.copied_while_folding == 0 and two.clips == one.clips == CLIPS
    await live_equals_a_fold(pool)
