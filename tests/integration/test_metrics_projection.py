"""The metrics projection (projections/metrics.py) on the real PostgreSQL: it counts what the log holds, exactly once
however many followers run and whatever fails mid-batch, equals a rebuild from the log, and keeps a recent window."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import asyncpg
import pytest

from domain.clip import Cancel, Complete, Fail, HandBack, Register, Retry, Start, TimeOut
from projections import metrics
from runtime.settings import Settings
from usecases.clips import handle
from usecases.services import utcnow

SETTINGS = Settings(database_url="x")


async def story(pool: asyncpg.Pool, project: str, clip: str, kind: str, now: datetime | None = None) -> None:
    """One clip's history of the given kind, decided at `now` (default: the present)."""
    at = now or utcnow()
    ctx = lambda: SETTINGS.context(at)  # noqa: E731

    async def run(*commands: object) -> None:
        for command in commands:
            await handle(pool, project, clip, command, ctx)  # type: ignore[arg-type]

    def done(run_: int, seconds: float) -> Complete:
        return Complete(run=run_, attempt=1, bytes=1, duration_seconds=1.0, elapsed_seconds=seconds, output="x.mp4")

    await run(Register(source="a.mp4", start=0.0, end=1.0), Start(run=1, attempt=1, worker_id="w"))
    if kind == "completed":
        await run(done(1, 0.3))
    elif kind == "failed":
        await run(Fail(run=1, attempt=1, code="ffmpeg_exit", message="x", retryable=False, elapsed_seconds=2.0))
    elif kind == "handed_back":  # a deploy: not a failed attempt
        await run(HandBack(run=1, attempt=1))
    elif kind == "timed_out":
        await run(TimeOut(run=1, attempt=1, detected_by="reaper", reason="lease"))
    elif kind == "cancelled":
        await run(Cancel())
    elif kind == "retried":
        await run(Fail(run=1, attempt=1, code="source_missing", message="x", retryable=False), Retry(),
                  Start(run=2, attempt=1, worker_id="w"), done(2, 42.0))  # fmt: skip


KINDS = ["completed", "failed", "handed_back", "timed_out", "cancelled", "retried"]


async def every_kind(pool: asyncpg.Pool, project: str) -> None:
    for index, kind in enumerate(KINDS):
        await story(pool, project, f"c{index}", kind)


async def caught_up(pool: asyncpg.Pool) -> None:
    while await metrics.catch_up(pool, batch=7) == 7:  # small batches: a clip's events span several
        pass


async def test_the_projection_counts_what_the_log_and_the_clip_projection_hold(pool, clean_db, ids):
    await every_kind(pool, ids.project())
    await caught_up(pool)
    snapshot = await metrics.read(pool)
    assert snapshot.position == await pool.fetchval("SELECT max(position) FROM events")
    assert {o: snapshot.get("attempts", o) for o in metrics.OUTCOMES} == {
        "completed": 2, "failed": 2, "timed_out": 1, "cancelled": 1
    }  # fmt: skip
    clips = {r["status"]: r["n"] for r in await pool.fetch("SELECT status, count(*) AS n FROM clips GROUP BY status")}
    assert {s: snapshot.get("clips", s) for s in clips} == clips
    assert sum(v for (m, _), v in snapshot.counts.items() if m == "clips") == len(KINDS)
    durations = [r["d"] for r in await pool.fetch(
        "SELECT (data->>'elapsed_seconds')::float8 AS d FROM events WHERE type = 'extraction.completed'"
    )]  # fmt: skip
    assert [snapshot.get("duration_le", f"{b:g}") for b in metrics.BUCKETS] == [
        sum(d <= b for d in durations) for b in metrics.BUCKETS
    ]
    assert (snapshot.get("duration", "count"), snapshot.get("duration", "sum")) == (len(durations), sum(durations))
    async with pool.acquire() as conn:
        assert await metrics.rebuild_differences(conn) == []


async def test_a_batch_that_fails_midway_counts_nothing_and_is_counted_once_later(pool, clean_db, ids, monkeypatch):
    # after the counters are written (patched first: a follower of an app in this process fails the same way)
    monkeypatch.setattr(metrics, "_ADD_ATTEMPTS", "SELECT no_such_function()")
    await every_kind(pool, ids.project())
    # (a follower of an app in this process may project the first events, those before any attempt; any batch
    # that holds an attempt fails for it too). Had a failed batch kept its counters without its checkpoint, the
    # catch-up below would count them twice and differ from the rebuild.
    assert (await metrics.read(pool)).position < await pool.fetchval("SELECT max(position) FROM events")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await metrics.catch_up(pool)
    monkeypatch.undo()
    await caught_up(pool)
    async with pool.acquire() as conn:
        assert await metrics.rebuild_differences(conn) == []
    assert (await metrics.read(pool)).get("attempts", "completed") == 2


async def test_concurrent_followers_count_every_event_exactly_once(pool, clean_db, ids):
    project = ids.project()

    async def follower(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await metrics.catch_up(pool, batch=3)
            await asyncio.sleep(0)

    stop = asyncio.Event()
    followers = [asyncio.create_task(follower(stop)) for _ in range(4)]
    try:
        await asyncio.gather(*(story(pool, project, f"c{i}", KINDS[i % len(KINDS)]) for i in range(25)))
    finally:
        stop.set()
        await asyncio.gather(*followers)
    await caught_up(pool)
    async with pool.acquire() as conn:
        assert await metrics.rebuild_differences(conn) == []
    completed = sum(KINDS[i % len(KINDS)] in ("completed", "retried") for i in range(25))
    assert (await metrics.read(pool)).get("attempts", "completed") == completed


async def test_a_reset_projection_is_rebuilt_from_the_log(pool, clean_db, ids):
    await every_kind(pool, ids.project())
    await caught_up(pool)
    before = await metrics.read(pool)
    async with pool.acquire() as conn:
        await metrics.reset(conn)  # (a follower of an app in this process may start the rebuild at once)
    await caught_up(pool)
    after = await metrics.read(pool)
    assert after.position == before.position and after.counts == before.counts, (before, after)


async def test_the_recent_window_holds_only_the_last_hour(pool, clean_db, ids):
    project = ids.project()
    two_hours_ago = utcnow() - timedelta(hours=2)
    for index, kind in enumerate(KINDS):
        await story(pool, project, f"old{index}", kind, now=two_hours_ago)
    await story(pool, project, "new-done", "completed")
    await story(pool, project, "new-failed", "failed")
    await caught_up(pool)
    assert (await metrics.read(pool)).get("attempts", "completed") == 3  # the totals count everything
    rates = await metrics.recent_rates(pool)
    assert (rates.completed, rates.failed, rates.timed_out) == (1, 1, 0)
    assert rates.p50_seconds == rates.p95_seconds == 0.3
    assert await pool.fetchval("SELECT count(*) FROM metric_recent_attempts") == 2
