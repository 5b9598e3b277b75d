"""The reactor (CLIPLOG_DISPATCH=fifo; the fair default runs handlers/dispatcher.py under the same leader lock
instead): follows the log from a checkpoint kept in PostgreSQL and turns each `requested` attempt into an arq job. Enqueueing is idempotent (the job id is unique to the attempt), so a crash between the enqueue and the
checkpoint only enqueues again what arq already holds, or what the job itself then finds stale.

One reactor runs at a time across all workers (a PostgreSQL advisory lock on its own connection). It wakes on
NOTIFY and also polls, because a NOTIFY can be lost with the connection that would have sent it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Callable
from uuid import UUID

import asyncpg
import msgspec
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms, to_unix_ms

from domain.events import ExtractionRequested, UndecodableEvent
from eventlog import store
from runtime.aio import reraise_if_cancelled, wait_event
from runtime.settings import Settings
from usecases.services import Services
from eventlog import locks

log = logging.getLogger("cliplog.reactor")

CHECKPOINT = "reactor"
LEADER_LOCK = locks.REACTOR
EXTRACT_JOB = "extract"
WAKE_CHANNEL = "cliplog:wake"  # published after enqueueing: idle workers pick the job up at once


class JobQueue(msgspec.Struct, frozen=True):
    """The arq queue of one log. Its name and its job ids carry the log's identity (`log_identity.epoch`), so two
    deployments that share a Redis database by mistake never take (or block) each other's jobs."""

    epoch: UUID

    @property
    def name(self) -> str:
        return f"cliplog:queue:{self.epoch}"

    def job_id(self, project_id: str, clip_id: str, run: int, attempt: int) -> str:
        return f"extract:{self.epoch}:{project_id}/{clip_id}:{run}:{attempt}"

    def attempt_of(self, job: str | bytes) -> tuple[str, str, int, int] | None:
        """The attempt (project, clip, run, attempt) of one of this queue's job ids, with or without a re-enqueue
        suffix; None for any other id."""
        text = job.decode() if isinstance(job, bytes) else job
        prefix = f"extract:{self.epoch}:"
        if not text.startswith(prefix):
            return None
        stream, _, numbers = text[len(prefix):].partition(":")
        project_id, _, clip_id = stream.partition("/")
        run, _, tail = numbers.partition(":")
        try:
            return (project_id, clip_id, int(run), int(tail.partition(":")[0]))
        except ValueError:
            return None


def job_timeout(settings: Settings) -> float:
    """arq's limit on one extraction job: the attempt's own timeout plus room to record its outcome. arq keeps a
    job it runs "in progress" for this plus 10 s."""
    return settings.attempt_timeout + 120


async def job_queue(db: asyncpg.Connection | asyncpg.Pool) -> JobQueue:
    return JobQueue(await store.epoch(db))


# arq's enqueue_job in one call instead of a WATCH/MULTI transaction (three round trips): refused when arq holds a job
# or a result under the id; else the job (arq's own serialization) and its place in the queue, and the wake-up.
_ENQUEUE = """
if redis.call('exists', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('psetex', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
if ARGV[5] ~= '' then redis.call('publish', ARGV[5], '1') end
return 1
"""


def _enqueue_script(redis: ArqRedis):  # noqa: ANN202 - redis-py's AsyncScript
    script = getattr(redis, "_cliplog_enqueue", None)
    if script is None:
        script = redis.register_script(_ENQUEUE)
        redis._cliplog_enqueue = script  # type: ignore[attr-defined]
    return script


async def enqueue_attempt(
    redis: ArqRedis,
    queue: JobQueue,
    project_id: str,
    clip_id: str,
    run: int,
    attempt: int,
    not_before: datetime | None,
    *,
    job: str | None = None,
    publish: bool = True,
) -> bool:
    """Enqueue the attempt's job (id `job`, by default the attempt's own) as arq's `enqueue_job` would, and wake idle
    workers (unless `publish` is false: the caller wakes them once for several); False when arq already holds a job
    (or its result) with that id."""
    job_id = job or queue.job_id(project_id, clip_id, run, attempt)
    enqueued_ms = timestamp_ms()
    score = to_unix_ms(not_before) if not_before is not None else enqueued_ms
    data = serialize_job(
        EXTRACT_JOB, (project_id, clip_id, run, attempt), {}, None, enqueued_ms, serializer=redis.job_serializer
    )
    added = await _enqueue_script(redis)(
        keys=[job_key_prefix + job_id, result_key_prefix + job_id, queue.name],
        args=[max(1, score - enqueued_ms + redis.expires_extra_ms), data, score, job_id, WAKE_CHANNEL if publish else ""],
    )
    return bool(added)


async def react_once(services: Services, batch: int = 500) -> int:
    """Handle the events after the checkpoint (one batch); return how many were handled.

    An event that cannot be decoded (unknown type, a newer schema version, bad data) is never skipped: the reactor
    stops just before it, records where and why in its checkpoint row (`health` shows it, the log says it once),
    and tries again at every wake-up, going on by itself once the event can be read (an upgraded worker)."""
    assert services.redis is not None
    row = await services.pool.fetchrow(
        "SELECT (SELECT position FROM checkpoints WHERE name = $1) AS position, (SELECT epoch FROM log_identity)",
        CHECKPOINT,
    )
    queue = JobQueue(row["epoch"])
    events = await store.read_after(services.pool, row["position"] or 0, batch)
    handled = 0
    poison: UndecodableEvent | None = None
    for event in events:
        try:
            data = event.decoded()
        except UndecodableEvent as error:
            poison = error
            await _stop_at(services, event, str(error))
            break
        if isinstance(data, ExtractionRequested):
            await enqueue_attempt(services.redis, queue, event.project_id, event.clip_id, data.run, data.attempt, data.not_before)
        handled += 1
    if handled:
        await services.pool.execute(
            "INSERT INTO checkpoints (name, position) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET "
            "position = GREATEST(checkpoints.position, EXCLUDED.position), "
            "stopped_at = CASE WHEN checkpoints.stopped_at <= EXCLUDED.position THEN NULL ELSE checkpoints.stopped_at END, "
            "stopped_reason = CASE WHEN checkpoints.stopped_at <= EXCLUDED.position THEN NULL "
            "ELSE checkpoints.stopped_reason END",
            CHECKPOINT,
            events[handled - 1].position,
        )
    return 0 if poison is not None else handled


async def _stop_at(services: Services, event: store.StoredEvent, reason: str) -> None:
    """Record that the reactor stops before `event`; log it once (not at every retry)."""
    changed = await services.pool.fetchval(
        "INSERT INTO checkpoints (name, position, stopped_at, stopped_reason) VALUES ($1, $2 - 1, $2, $3) "
        "ON CONFLICT (name) DO UPDATE SET stopped_at = $2, stopped_reason = $3 "
        "WHERE checkpoints.stopped_at IS DISTINCT FROM $2 RETURNING 1",
        CHECKPOINT,
        event.position,
        reason,
    )
    if changed:
        log.error(
            "reactor stopped before event %s (%s v%s, %s): %s; it goes on once a version of cliplog that reads it runs",
            event.position, event.stream, event.version, event.type, reason,
        )


class Stopped(msgspec.Struct, frozen=True):
    position: int
    reason: str


async def stopped(services: Services) -> Stopped | None:
    """Where the reactor stopped at an event it cannot decode, if it did."""
    row = await services.pool.fetchrow(
        "SELECT stopped_at, stopped_reason FROM checkpoints WHERE name = $1 AND stopped_at IS NOT NULL", CHECKPOINT
    )
    return Stopped(row["stopped_at"], row["stopped_reason"]) if row else None


async def save_checkpoint(pool: asyncpg.Pool, position: int) -> None:
    await pool.execute(
        "INSERT INTO checkpoints (name, position) VALUES ($1, $2) "
        "ON CONFLICT (name) DO UPDATE SET position = GREATEST(checkpoints.position, EXCLUDED.position)",
        CHECKPOINT,
        position,
    )


async def lag(services: Services) -> int:
    """Positions in the log the reactor has not passed yet (an upper bound on its unhandled events)."""
    return await services.pool.fetchval(
        "SELECT greatest(0, coalesce((SELECT max(position) FROM events), 0) "
        "- coalesce((SELECT position FROM checkpoints WHERE name = $1), 0))",
        CHECKPOINT,
    )


async def run_as_leader(  # noqa: ANN001
    services: Services, lock_key: int, step, period: float | Callable[[], float], name: str, *,
    wake_on_notify: bool = True,
) -> None:  # fmt: skip
    """Forever: become the one holder of `lock_key`, then run `step()` whenever woken by NOTIFY or every `period`
    seconds (a function: asked again after every pass).

    Survives PostgreSQL outages: on any connection error it waits and tries again.
    """
    sleep = period if callable(period) else lambda: period
    while True:
        conn = None
        try:
            conn = await services.connect_leader()
            reraise_if_cancelled()  # asyncpg's connect timeout (wait_for on 3.11) can swallow a cancellation
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key):
                await asyncio.sleep(min(sleep(), 2.0))
            wake = asyncio.Event()
            if wake_on_notify:
                await conn.add_listener(store.NOTIFY_CHANNEL, lambda *_: wake.set())
            log.info("%s: leading", name)
            while True:
                reraise_if_cancelled()  # one a library swallowed in the last pass must still end the loop
                wake.clear()
                while await step(services):
                    pass
                if not await wait_event(wake, sleep()):
                    await conn.fetchval("SELECT 1")  # notice a lost lock connection promptly (a NOTIFY proves it)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            reraise_if_cancelled()
            log.warning("%s: %s: %s; trying again", name, type(error).__name__, error)
            await asyncio.sleep(1.0)
        finally:
            if conn is not None:
                conn.terminate()  # drops the session lock and the listener with it


async def follow(services: Services) -> None:
    await run_as_leader(services, LEADER_LOCK, react_once, 1.0, "reactor")
