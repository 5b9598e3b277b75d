"""`eventlog.pages.backfill_feed` (run by `cliplog rebuild` after its swap): events written without the feed's stored
fingerprint (before migration 019) or without any stored feed text (before 018) get what the appends would have
written, their pages stay the same bytes, a row repaired in place meanwhile is never given a stale fingerprint, and a
backfill that fails leaves the rebuild in place and says so."""

from __future__ import annotations

import asyncpg
import httpx

from eventlog import cursor, feed_json, store
from eventlog.pages import backfill_feed
from tests.feed_support import register
from tests.integration.test_replay_tools import cliplog

COLUMNS = "SELECT position, feed_fingerprint, feed_print, feed_tail FROM events WHERE position = ANY($1::bigint[])"
FORGET = "UPDATE events SET feed_fingerprint = NULL, feed_print = NULL, feed_tail = NULL WHERE position = ANY($1::bigint[])"


async def test_the_backfill_stores_what_the_appends_write_and_pages_stay_the_same(api_server, pool, ids, make_user):
    user, token = await make_user()
    project = ids.project()
    positions = [await register(pool, project, user) for _ in range(5)]
    written = sorted(map(tuple, await pool.fetch(COLUMNS, positions)))
    await pool.execute("UPDATE events SET feed_fingerprint = NULL WHERE position = ANY($1::bigint[])", positions[:2])
    await pool.execute(FORGET, positions[3:4])
    headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"}
    async with httpx.AsyncClient(base_url=api_server.url, headers=headers, timeout=40) as http:
        before = await http.get("/api/events", params={"project_id": project})
        async with pool.acquire() as conn:
            assert await backfill_feed(conn, batch=2) == 3
            assert await backfill_feed(conn) == 0
        assert sorted(map(tuple, await pool.fetch(COLUMNS, positions))) == written
        after = await http.get("/api/events", params={"project_id": project})
    assert before.status_code == after.status_code == 200
    assert after.content == before.content and len(after.json()["events"]) == 5


class RepairedMeanwhile:
    """A connection whose first `execute` (the backfill's UPDATE) runs `repair` first: a row changed in place between
    the backfill's read and its write."""

    def __init__(self, conn: asyncpg.Connection, repair) -> None:  # noqa: ANN001
        self.conn, self.repair, self.repaired = conn, repair, False

    async def fetch(self, *args: object) -> list[asyncpg.Record]:
        return await self.conn.fetch(*args)

    async def execute(self, *args: object) -> str:
        if not self.repaired:
            self.repaired = True
            await self.repair()
        return await self.conn.execute(*args)


async def test_a_row_repaired_between_the_backfills_read_and_write_gets_no_stale_fingerprint(pool, ids, make_user):
    user, _ = await make_user()
    project = ids.project()
    moved, changed = await register(pool, project, user), await register(pool, project, user)
    await pool.execute(FORGET, [moved, changed])

    async def repair() -> None:  # `moved`: its time (so its fingerprint's text); `changed`: only its data
        await pool.execute("UPDATE events SET recorded_at = recorded_at + interval '1 second' WHERE position = $1", moved)
        await pool.execute("""UPDATE events SET data = data || '{"repaired": true}'::jsonb WHERE position = $1""", changed)

    async with pool.acquire() as conn:
        assert await backfill_feed(RepairedMeanwhile(conn, repair)) == 1  # `changed` only: its text is the same
    read = (f"SELECT stream, version, recorded_at, feed_fingerprint, feed_print, feed_tail, {feed_json.ROW_TAIL} AS tail "
            "FROM events WHERE position = $1")
    row = await pool.fetchrow(read, changed)
    assert row["feed_fingerprint"] == cursor.stored_fingerprint(row["stream"], row["version"], row["recorded_at"])
    assert row["feed_tail"] == row["tail"] and '"repaired": true' in row["feed_tail"]
    assert (await pool.fetchrow(read, moved))["feed_fingerprint"] is None  # left for the next run, not stale
    async with pool.acquire() as conn:
        assert await backfill_feed(conn) == 1
    row = await pool.fetchrow(read, moved)
    assert row["feed_fingerprint"] == cursor.stored_fingerprint(row["stream"], row["version"], row["recorded_at"])


async def test_cliplog_rebuild_runs_the_backfill_and_a_failed_one_leaves_the_rebuild(make_database):
    url = await make_database(migrated=True)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2, **store.POOL_OPTIONS)
    try:
        positions = [await register(pool, "p", "alice") for _ in range(3)]
        written = await pool.fetch("SELECT feed_fingerprint FROM events ORDER BY position")
        await pool.execute("UPDATE events SET feed_fingerprint = NULL WHERE position = ANY($1::bigint[])", positions[1:])
        # the backfill's UPDATE fails (the rebuild writes no events): the rebuild is done and said, exit 0, a warning
        await pool.execute("""
            CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'no update here'; END $$;
            CREATE TRIGGER refuse BEFORE UPDATE ON events FOR EACH ROW EXECUTE FUNCTION refuse();
        """)
        refused = cliplog("rebuild", database_url=url)
        assert refused.returncode == 0, refused.stderr
        assert "rebuilt clips: 3 clip(s) from 3 event(s)" in refused.stdout
        assert "storing the feed fingerprints of older events stopped" in refused.stderr
        assert "no update here" in refused.stderr and "Traceback" not in refused.stderr
        await pool.execute("DROP TRIGGER refuse ON events; DROP FUNCTION refuse()")
        done = cliplog("rebuild", database_url=url)
        assert "stored the feed fingerprint of 2 event(s) written without it" in done.stdout
        assert await pool.fetch("SELECT feed_fingerprint FROM events ORDER BY position") == written
        assert "stored the feed fingerprint" not in cliplog("rebuild", database_url=url).stdout
    finally:
        await pool.close()
