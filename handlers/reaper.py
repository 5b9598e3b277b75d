"""The reaper: every few seconds, one at a time across all workers, it makes sure nothing waits without bound.

- A running attempt whose lease has not been renewed for `lease_timeout` (its worker is gone) or whose deadline
  has passed gets `timed_out` (detected_by: reaper; reason: lease, or deadline when that has passed too); the
  clip's retry policy then schedules the next attempt. The file that attempt may have published is removed (once
  every timeout of the round is appended, together, within 5 s in all, so a hung store delays no timeout): a
  worker lost between publishing and recording `completed` would otherwise leave an output no clip points at, and a
  live latecomer's `completed` can no longer be recorded.
- With CLIPLOG_DISPATCH=fifo, a requested attempt that has not started `requeue_after` seconds after it was due,
  and whose job is not waiting in the queue, is enqueued again (Redis was flushed or restarted, or a worker died
  before starting it: a job
  that arq holds "in progress" but whose attempt has not started by then counts as not waiting). Each
  re-enqueue has its own job id, and a duplicate job finds its attempt already started and does nothing. With
  fair dispatch the dispatcher itself admits again, within a second, an admitted attempt missing from the queue
  (within the capacity and the limits); the reaper only takes out of the queue an admitted job that a worker took
  and did not start for `requeue_after` seconds (`dispatcher.release_stuck_admissions`), for the dispatcher to
  admit again.
- Temporary output files older than any attempt may live are removed.
- Every `orphan_sweep_interval` seconds, outputs no `completed` event points at (a finished cut whose attempt was
  cancelled, handed back or timed out while its outcome was being recorded, or an upload cut short) are removed once
  older than `orphan_grace` (longer than an attempt may take to record its outcome: settings check it, so an output
  whose `completed` is still on its way is never taken). One sweep for both backends (`remove_orphaned_outputs`
  lists the storage's outputs: the files under the output root, or the objects under the S3 output prefix), run by
  one worker at a time under its own advisory lock (`locks.ORPHAN_SWEEP`), beside the reaper, so that listing a
  large bucket never delays the reaper's timeouts. File-system calls run in threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta
from typing import Iterable

import asyncpg

from arq.constants import in_progress_key_prefix

from domain.clip import TimeOut
from domain.errors import StaleAttempt
from eventlog.store import stream_name
from handlers import dispatcher, extraction, reactor
from handlers.extraction import TEMP_PREFIX, attempt_output, cutting_root, discard_output, output_clip
from usecases.clips import handle
from storage.base import StorageError
from usecases.services import Services, utcnow
from eventlog import locks

log = logging.getLogger("cliplog.reaper")

LEADER_LOCK = locks.REAPER
SWEEP_LOCK = locks.ORPHAN_SWEEP
DISCARD_CONCURRENCY = 16  # deletions of timed-out attempts' outputs at once


async def time_out_lost_attempts(services: Services) -> int:
    settings = services.settings
    rows = await services.pool.fetch(
        """
        SELECT c.project_id, c.clip_id, c.run, c.attempt, c.deadline_at < $1 AS past_deadline
        FROM clips c
        LEFT JOIN leases l ON l.project_id = c.project_id AND l.clip_id = c.clip_id
                          AND l.run = c.run AND l.attempt = c.attempt
        WHERE c.status = 'running'
          AND (c.deadline_at < $1 OR coalesce(l.renewed_at, c.status_since) < now() - make_interval(secs => $2))
        """,
        # A live worker stops its own attempt at the deadline; the reaper steps in only for one that could not.
        utcnow() - timedelta(seconds=2 * settings.heartbeat_interval),
        settings.lease_timeout,
    )
    timed_out: list[str] = []
    try:
        await _time_out(services, rows, timed_out)
    finally:  # even when PostgreSQL fails midway: those already timed out are never seen here again
        await discard_outputs(services, timed_out)
    return len(rows)


async def _time_out(services: Services, rows: list[asyncpg.Record], timed_out: list[str]) -> None:
    """Append each row's `timed_out`, adding the attempt's output name to `timed_out` once it is in the log."""
    for row in rows:
        try:
            await handle(
                services.pool,
                row["project_id"],
                row["clip_id"],
                TimeOut(
                    run=row["run"],
                    attempt=row["attempt"],
                    detected_by="reaper",
                    reason="deadline" if row["past_deadline"] else "lease",
                ),
                services.context,
            )
            log.warning("timed out attempt %s.%s of %s/%s", row["run"], row["attempt"], row["project_id"], row["clip_id"])
        except StaleAttempt:
            continue  # it finished meanwhile
        timed_out.append(attempt_output(row["project_id"], row["clip_id"], row["run"], row["attempt"]))


async def discard_outputs(services: Services, names: list[str]) -> None:
    """Remove the outputs the timed-out attempts may have published, once every timeout is appended, together and
    within CLEANUP_TIMEOUT in all: a hung store delays the reaper by that at most, never each timeout (what is left
    the orphan sweep removes)."""
    if not names:
        return
    try:
        limit = asyncio.Semaphore(DISCARD_CONCURRENCY)

        async def discard(name: str) -> None:
            async with limit:
                await discard_output(services.store, name)

        async with asyncio.timeout(extraction.CLEANUP_TIMEOUT):
            await asyncio.gather(*(discard(name) for name in names))
    except TimeoutError:
        log.warning("could not remove the outputs of %d timed-out attempts in time; the orphan sweep will", len(names))


async def requeue_lost_jobs(services: Services) -> int:
    """Enqueue again the due attempts that have not started and are not in the queue."""
    assert services.redis is not None
    settings = services.settings
    now = utcnow()
    rows = await services.pool.fetch(
        """
        SELECT project_id, clip_id, run, attempt, not_before FROM clips
        WHERE status IN ('pending', 'retrying') AND not_before < $1
        """,
        now - timedelta(seconds=settings.requeue_after),
    )
    count = 0
    queue = await reactor.job_queue(services.pool) if rows else None
    for row in rows:
        assert queue is not None
        base = queue.job_id(row["project_id"], row["clip_id"], row["run"], row["attempt"])
        generation = int((now - row["not_before"]).total_seconds() // settings.requeue_after)
        earlier = [base] + [f"{base}:again{n}" for n in range(max(1, generation - 50), generation + 1)]
        queued = [job for job, score in zip(earlier, await services.redis.zmscore(queue.name, earlier))
                  if score is not None]
        if queued and await services.redis.exists(*(in_progress_key_prefix + job for job in queued)) < len(queued):
            continue  # still waiting for a free worker
        # Not queued, or every queued copy was taken by a worker that has not started the attempt in
        # `requeue_after` seconds: it died in between, and arq keeps its job "in progress" for job_timeout + 10 s.
        enqueued = await reactor.enqueue_attempt(
            services.redis, queue, row["project_id"], row["clip_id"], row["run"], row["attempt"], None,
            job=f"{base}:again{generation}",
        )
        if enqueued:
            count += 1
            log.warning("re-enqueued attempt %s.%s of %s/%s", row["run"], row["attempt"], row["project_id"], row["clip_id"])
    return count


def remove_stale_temporaries(services: Services) -> int:
    """Temporary cuts older than any attempt may live: beside the local outputs, and in this machine's cutting
    folder (S3 storage cuts there before uploading). Blocking."""
    settings = services.settings
    oldest = time.time() - settings.attempt_timeout - 60
    removed = 0
    for root in (settings.output_root, cutting_root(settings)):
        if not root.is_dir():
            continue
        for path in root.glob(f"*/{TEMP_PREFIX}*"):
            try:
                if path.stat().st_mtime < oldest:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
    return removed


async def referenced_outputs(db: asyncpg.Pool | asyncpg.Connection, names: Iterable[str]) -> set[str]:
    """Those of `names` a `completed` event points at: read by their clips' streams (an index), not the whole log."""
    streams = sorted({stream_name(*clip) for name in names if (clip := output_clip(name)) is not None})
    rows = await db.fetch(
        "SELECT data->>'output' AS output FROM events WHERE stream = ANY($1::text[]) AND type = 'extraction.completed'",
        streams,
    )
    return {row["output"] for row in rows}


SWEEP_BATCH = 1000  # outputs looked up in the log at once


async def remove_orphaned_outputs(services: Services, now: datetime | None = None) -> int:
    """Remove the outputs (files under the output root, or objects under the S3 output prefix) older than
    `orphan_grace` that no `completed` event points at; returns how many. Names not shaped like an output, and
    temporaries, are left alone. The listing comes first: a `completed` committed before the query is seen, and a
    later one cannot name an output that old (the grace is longer than an attempt may take to record its
    outcome)."""
    storage = services.store
    oldest = (now or utcnow()) - timedelta(seconds=services.settings.orphan_grace)
    removed = 0
    batch: list[str] = []

    async def sweep(names: list[str]) -> int:
        referenced = await referenced_outputs(services.pool, names)
        count = 0
        for name in names:
            if name not in referenced:
                try:
                    await storage.delete_output(name)
                except StorageError as error:  # one object that cannot go must not keep every later one
                    log.warning("could not remove the orphaned output %s: %s", name, error)
                    continue
                log.info("removed the orphaned output %s (no completed event points at it)", name)
                count += 1
        return count

    async for item in storage.list_outputs():
        if item.modified < oldest and output_clip(item.key) is not None and not item.key.split("/")[-1].startswith(TEMP_PREFIX):
            batch.append(item.key)
            if len(batch) >= SWEEP_BATCH:
                removed += await sweep(batch)
                batch = []
    if batch:
        removed += await sweep(batch)
    return removed


async def reap_once(services: Services) -> bool:
    await time_out_lost_attempts(services)
    if services.settings.dispatch == "fifo":
        await requeue_lost_jobs(services)
    else:
        await dispatcher.release_stuck_admissions(services)
    await asyncio.to_thread(remove_stale_temporaries, services)  # a glob and a stat per file: slow storage blocks
    return False  # one pass per period


async def sweep_once(services: Services) -> bool:
    await remove_orphaned_outputs(services)
    return False  # one pass per period


async def follow_sweep(services: Services) -> None:
    """The orphan sweep: at once on becoming its leader, then every `orphan_sweep_interval` seconds."""
    await reactor.run_as_leader(
        services, SWEEP_LOCK, sweep_once, services.settings.orphan_sweep_interval, "orphan sweep",
        wake_on_notify=False,
    )  # fmt: skip


async def follow(services: Services) -> None:
    """The reaper, and beside it (under its own lock) the orphan sweep."""
    reaping = reactor.run_as_leader(
        services, LEADER_LOCK, reap_once, services.settings.reaper_interval, "reaper", wake_on_notify=False
    )
    sweeping = asyncio.ensure_future(follow_sweep(services))
    try:
        await reaping
    finally:
        sweeping.cancel()
        await asyncio.gather(sweeping, return_exceptions=True)
