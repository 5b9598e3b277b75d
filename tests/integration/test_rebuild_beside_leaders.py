"""`cliplog rebuild` runs while workers lead the reactor and the reaper (found by `cliplog soak`: the rebuild's
advisory lock was the reactor's, so it refused "another rebuild is running" on any live deployment)."""

from __future__ import annotations

import time

import asyncpg

from eventlog.store import init_connection
from handlers import reactor, reaper
from projections.rebuild import rebuild


async def test_a_rebuild_runs_while_the_reactor_and_the_reaper_hold_their_leader_locks(make_database):
    url = await make_database(migrated=True)
    leader = await asyncpg.connect(url)
    conn = await asyncpg.connect(url)
    try:
        for key in (reactor.LEADER_LOCK, reaper.LEADER_LOCK):
            assert await leader.fetchval("SELECT pg_try_advisory_lock($1)", key)
        await init_connection(conn)
        done = await rebuild(conn, clock=time.monotonic)
        assert done.clips == 0
        # and the leaders still hold their locks: the rebuild took none of them
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1 AND objid = ANY($2::int[])",
            await leader.fetchval("SELECT pg_backend_pid()"), [reactor.LEADER_LOCK, reaper.LEADER_LOCK],
        )
        assert held == 2
    finally:
        await conn.close()
        await leader.close()
