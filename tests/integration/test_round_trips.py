"""Round trips the hot paths no longer make, and what stays as strict without them.

- The services' pool releases a connection without asyncpg's reset query (`store.reset_connection`): no round trip
  on release, a transaction left open still rolled back, and a clip's life on pooled connections leaves no session
  state behind (no advisory lock held, no LISTEN, no session setting) for the next user of the connection; an
  append that raised or was cancelled frees the connection's session locks on release (the allocator's, had an
  interrupt landed in its handler).
- `handle(known=...)` decides on the state the worker read or wrote last without reading it again: a state that
  moved on meanwhile (a person cancelled) conflicts and is read, so the late start or outcome is stale, and the log
  holds nothing of it.
- Without a transactional extra write, `handle` appends the events and writes the clip's row (and a start's lease)
  in one statement: when the row is not at the version decided on, none of it is written.
- `handle(owned_by=...)` (registration) reads the project's owner with the clip: another user's project is a 404,
  an unclaimed one is claimed in the registering transaction, the user's own one is not claimed again."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from domain.clip import Cancel, Complete, Register, Start, decide, evolve
from domain.errors import NotFound, StaleAttempt, VersionConflict
from eventlog import locks, store
from projections import clip_status
from runtime.bootstrap import open_services
from runtime.settings import Settings
from usecases import clips

SESSION_STATE = """
SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory,
       (SELECT count(*) FROM pg_listening_channels()) AS listening,
       -- (asyncpg turns jit off while it introspects a type, then sets it back: the same value, from the session)
       (SELECT count(*) FROM pg_settings WHERE source = 'session' AND setting IS DISTINCT FROM reset_val) AS settings
"""


async def test_a_release_sends_no_reset_and_still_rolls_back_an_open_transaction(make_database, redis_url):
    services = await open_services(Settings(database_url=await make_database(migrated=True), redis_url=redis_url),
                                   pool_size=1)  # fmt: skip
    try:
        async with services.pool.acquire() as conn:
            # session state no cliplog code sets on a pooled connection: here only to see that no RESET ALL ran
            await conn.execute("SELECT set_config('application_name', 'not-reset', false)")
            transaction = conn.transaction()
            await transaction.start()  # left open on release
            await conn.execute("INSERT INTO checkpoints (name, position) VALUES ('left-open', 1)")
        async with services.pool.acquire() as conn:  # the same connection (a pool of one)
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM checkpoints WHERE name = 'left-open'") == 0
            assert await conn.fetchval("SELECT current_setting('application_name')") == "not-reset"
            await conn.execute("RESET application_name")
    finally:
        await services.close()


async def test_a_clips_life_leaves_no_session_state_on_the_pooled_connections(make_database, redis_url):
    services = await open_services(Settings(database_url=await make_database(migrated=True), redis_url=redis_url),
                                   pool_size=2)  # fmt: skip
    try:
        registered = await clips.register(services.pool, "p", "c", Register(source="a.mp4", start=0.0, end=2.0),
                                          services.context, user="alice")  # fmt: skip
        started = await clips.start_attempt(services.pool, "p", "c", Start(run=1, attempt=1, worker_id="w"),
                                            services.context, known=(registered.state, registered.position))  # fmt: skip
        await clips.handle(services.pool, "p", "c", Complete(run=1, attempt=1, bytes=1, duration_seconds=2.0,
                                                             elapsed_seconds=0.1, output="p/c.r1a1.mp4"),
                           services.context, known=(started.state, started.position))  # fmt: skip
        async with services.pool.acquire() as one, services.pool.acquire() as two:  # every connection of the pool
            for conn in (one, two):
                state = await conn.fetchrow(SESSION_STATE)
                assert dict(state) == {"advisory": 0, "listening": 0, "settings": 0}
    finally:
        await services.close()


def _complete() -> Complete:
    return Complete(run=1, attempt=1, bytes=1, duration_seconds=2.0, elapsed_seconds=0.1, output="p/c.r1a1.mp4")


async def test_a_known_state_that_moved_on_is_read_again_and_its_start_or_outcome_is_stale(make_database, redis_url):
    services = await open_services(Settings(database_url=await make_database(migrated=True), redis_url=redis_url),
                                   pool_size=2)  # fmt: skip
    try:
        registered = await clips.register(services.pool, "p", "c", Register(source="a.mp4", start=0.0, end=2.0),
                                          services.context, user="alice")  # fmt: skip
        read = (registered.state, registered.position)
        await clips.handle(services.pool, "p", "c", Cancel(), services.context)  # after the worker read the clip
        with pytest.raises(StaleAttempt):
            await clips.start_attempt(services.pool, "p", "c", Start(run=1, attempt=1, worker_id="w"),
                                      services.context, known=read)  # fmt: skip
        registered = await clips.register(services.pool, "p", "d", Register(source="a.mp4", start=0.0, end=2.0),
                                          services.context, user="alice")  # fmt: skip
        started = await clips.start_attempt(services.pool, "p", "d", Start(run=1, attempt=1, worker_id="w"),
                                            services.context, known=(registered.state, registered.position))  # fmt: skip
        await clips.handle(services.pool, "p", "d", Cancel(), services.context)  # while it ran
        with pytest.raises(StaleAttempt):
            await clips.handle(services.pool, "p", "d", _complete(), services.context,
                               known=(started.state, started.position))  # fmt: skip
        types = [e.type for e in await store.read_stream(services.pool, "p", "c")]
        assert types == ["extraction.requested", "extraction.cancelled"]
        types = [e.type for e in await store.read_stream(services.pool, "p", "d")]
        assert types == ["extraction.requested", "extraction.started", "extraction.cancelled"]
    finally:
        await services.close()


async def test_registration_reads_the_owner_with_the_clip_and_claims_only_an_unclaimed_project(
    make_database, redis_url
):
    services = await open_services(Settings(database_url=await make_database(migrated=True), redis_url=redis_url),
                                   pool_size=1)  # fmt: skip
    try:
        sent: list[str] = []
        command = Register(source="a.mp4", start=0.0, end=2.0)
        await clips.register(services.pool, "p", "c1", command, services.context, user="alice")
        await clips.register(services.pool, "p", "c2", command, services.context, user="alice")  # statements known
        async with services.pool.acquire() as conn:
            assert await conn.fetchval("SELECT owner FROM projects WHERE project_id = 'p'") == "alice"
            conn.add_query_logger(lambda record: sent.append(record.query))
        await clips.register(services.pool, "p", "c3", command, services.context, user="alice")
        await services.pool.execute("SELECT 'after'")  # the loggers run soon after each query: by now, surely
        sent = [q for q in sent if q != "SELECT 'after'"]
        # her own project is not claimed again: the clip and its owner; the events, the clip's row; the NOTIFY
        assert [q.split()[0] for q in sent] == ["SELECT", "WITH", "SELECT"], sent
        assert "projects" not in sent[1] and "pg_notify" in sent[2]
        with pytest.raises(NotFound):
            await clips.register(services.pool, "p", "c4", command, services.context, user="bob")
        assert [e.type for e in await store.read_stream(services.pool, "p", "c4")] == []
        assert [e.type for e in await store.read_stream(services.pool, "p", "c3")] == ["extraction.requested"]
    finally:
        await services.close()


async def test_one_statement_appends_nothing_when_the_clip_row_is_not_at_the_version_decided_on(
    make_database, redis_url
):
    services = await open_services(Settings(database_url=await make_database(migrated=True), redis_url=redis_url),
                                   pool_size=1)  # fmt: skip
    try:
        registered = await clips.register(services.pool, "p", "c", Register(source="a.mp4", start=0.0, end=2.0),
                                          services.context, user="alice")  # fmt: skip
        state, ctx = registered.state, services.context()
        events = decide(state, Cancel(), ctx)
        new_state = state
        pairs = []
        for event in events:
            new_state = evolve(new_state, event, ctx.now)
            pairs.append((event, new_state.status))
        async with services.pool.acquire() as conn:
            with pytest.raises(VersionConflict):  # the row is at version 1, not 5: its write refuses, all of it
                await store.append_with(
                    conn, clips._writes_sql(False), clips._write_args(new_state, 5, None), project_id="p",
                    clip_id="c", expected_version=state.version, events=pairs, recorded_at=ctx.now,
                )  # fmt: skip
            assert not conn.is_in_transaction()
        assert [e.type for e in await store.read_stream(services.pool, "p", "c")] == ["extraction.requested"]
        assert (await clip_status.load(services.pool, "p", "c")).status == "pending"
        handled = await clips.handle(services.pool, "p", "c", Cancel(), services.context)  # the same, at version 1
        assert [e.type for e in handled.appended] == ["extraction.cancelled"]
        assert (await clip_status.load(services.pool, "p", "c")).status == "cancelled"
    finally:
        await services.close()


HELD = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()"


async def test_an_interrupted_append_frees_the_session_locks_on_its_connection_when_released(make_database, redis_url):
    """The one session lock a pooled connection takes is the allocator's, freed by its own handler; should an
    interrupt land in that handler, the lock would stay with the connection, and without asyncpg's reset nothing
    would free it. So an append that raised (a conflict) or was cancelled (here while it waits for the allocator's
    lock, which another session holds) marks its connection, and the release frees its session locks: the lock
    taken by hand below stands for the allocator's. A connection released after anything else keeps its locks (no
    reset ran)."""
    database_url = await make_database(migrated=True)
    services = await open_services(Settings(database_url=database_url, redis_url=redis_url), pool_size=1)
    holder = await asyncpg.connect(database_url)
    try:
        registered = await clips.register(services.pool, "p", "c", Register(source="a.mp4", start=0.0, end=2.0),
                                          services.context, user="alice")  # fmt: skip
        ctx = services.context()
        [event] = decide(registered.state, Cancel(), ctx)
        pairs = [(event, evolve(registered.state, event, ctx.now).status)]
        append = dict(project_id="p", clip_id="c", events=pairs, recorded_at=ctx.now)

        async with services.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock(4242)")
        async with services.pool.acquire() as conn:  # the same connection (a pool of one): nothing freed it
            assert await conn.fetchval(HELD) == 1
            with pytest.raises(VersionConflict):
                async with conn.transaction():
                    await store.append(conn, expected_version=0, **append)  # the stream is at 1
        async with services.pool.acquire() as conn:
            assert await conn.fetchval(HELD) == 0

            await conn.execute("SELECT pg_advisory_lock(4242)")
        await holder.execute("SELECT pg_advisory_lock($1)", locks.POSITION_ALLOCATOR)  # held elsewhere
        waiting = asyncio.Event()

        async def append_while_the_allocator_waits() -> None:
            async with services.pool.acquire() as conn:
                backend = await conn.fetchval("SELECT pg_backend_pid()")
                async with conn.transaction():
                    task = asyncio.ensure_future(store.append(conn, expected_version=1, **append))
                    while not await holder.fetchval(
                        "SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND NOT granted",
                        backend,
                    ):
                        await asyncio.sleep(0.01)
                    waiting.set()
                    await task

        appending = asyncio.ensure_future(append_while_the_allocator_waits())
        await asyncio.wait_for(waiting.wait(), 10)
        appending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await appending
        await holder.execute("SELECT pg_advisory_unlock($1)", locks.POSITION_ALLOCATOR)
        async with services.pool.acquire() as conn:
            assert await conn.fetchval(HELD) == 0
            assert [e.type for e in await store.read_stream(conn, "p", "c")] == ["extraction.requested"]
    finally:
        await holder.close()
        await services.close()
