"""The dispatcher (CLIPLOG_DISPATCH=fair, the default): attempts wait in PostgreSQL, and one dispatcher across all
workers (the reactor's leader lock, in place of the reactor) admits them to arq's queue as worker slots free up, in
the order of domain/dispatch.py. With CLIPLOG_DISPATCH=fifo the reactor enqueues every attempt the moment it is
requested instead (first come, first served).

Redis holds no truth here either; every pass derives the whole admission state again:
- waiting: the clip projection's pending/retrying rows whose `not_before` has passed (a retry is never admitted
  before its backoff ends);
- admitted: those whose job, under the attempt's own id (`JobQueue.job_id`), is in the log's arq queue. After a Redis flush
  the queue is empty, so they are admitted again under the same id; arq refuses a second job with an id it holds, so
  no attempt is ever queued twice, and a duplicate job would find its attempt started and do nothing;
- capacity: what the live workers take at once, from their presence keys: each FFmpeg slot's running attempt and
  one waiting behind it (`handlers.worker.holds`), so a slot starts its next cut the moment FFmpeg exits, not a
  dispatcher pass after the outcome is recorded.
A pass admits `capacity - running - admitted` attempts (or fewer, under the concurrency limits). It runs on every
NOTIFY of the log (a request, an outcome), when the next retry falls due, and at least every second.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

import asyncpg
import msgspec
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix

from domain.dispatch import InFlight, Limits, Turns, Waiting, select
from domain.clip import ClipState
from handlers import reactor
from handlers.presence import presence_prefix
from handlers.reactor import JobQueue
from usecases.services import Services, utcnow

log = logging.getLogger("cliplog.dispatcher")

PERIOD = 1.0  # a pass at least this often: heals a flushed queue, a lost NOTIFY, a worker that came or went
CAPACITY_TTL = 0.5  # seconds after which a pass reads the presence keys again (after its admissions)
CHECKPOINT_EVERY = 0.5  # seconds between writes of the reactor checkpoint (health's lag) by the dispatcher

Key = tuple[str, str, int, int]

# One round trip: what runs, what is admitted, the oldest due attempts of each project and priority (at most
# `$5`, more could not be admitted in one pass), when the next retry falls due, and the log's head.
_SNAPSHOT = """
WITH queued AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::int[]) AS q(project_id, clip_id, run, attempt)
), waiting AS (
    SELECT c.project_id, c.clip_id, c.run, c.attempt, c.priority, c.position, c.not_before,
           EXISTS (SELECT 1 FROM queued q WHERE q.project_id = c.project_id AND q.clip_id = c.clip_id
                                            AND q.run = c.run AND q.attempt = c.attempt) AS admitted
    FROM clips c WHERE c.status IN ('pending', 'retrying')
), due AS (
    SELECT w.*, row_number() OVER (PARTITION BY w.project_id, w.priority ORDER BY w.position) AS rank
    FROM waiting w WHERE NOT w.admitted AND (w.not_before IS NULL OR w.not_before <= $6)
)
SELECT 'running' AS kind, c.project_id, c.clip_id, c.run, c.attempt, c.priority, c.position, p.owner,
       NULL::timestamptz AS at
  FROM clips c LEFT JOIN projects p USING (project_id) WHERE c.status = 'running'
UNION ALL
SELECT 'admitted', w.project_id, w.clip_id, w.run, w.attempt, w.priority, w.position, p.owner, w.not_before
  FROM waiting w LEFT JOIN projects p USING (project_id) WHERE w.admitted
UNION ALL
SELECT 'due', d.project_id, d.clip_id, d.run, d.attempt, d.priority, d.position, p.owner, d.not_before
  FROM due d LEFT JOIN projects p USING (project_id) WHERE d.rank <= $5
UNION ALL
SELECT 'next', NULL, NULL, NULL, NULL, NULL, NULL, NULL, min(w.not_before)
  FROM waiting w WHERE NOT w.admitted AND w.not_before > $6
UNION ALL
SELECT 'head', NULL, NULL, NULL, NULL, NULL, (SELECT max(position) FROM events), NULL, NULL
"""


async def queued_attempts(redis: ArqRedis, queue: JobQueue) -> set[Key]:
    """The attempts with a job in the queue (waiting for a worker, or running: arq removes a job when it ends)."""
    return {key for job in await redis.zrange(queue.name, 0, -1) if (key := queue.attempt_of(job)) is not None}


async def live_capacity(redis: ArqRedis, queue: JobQueue) -> int:
    """The sum of what the log's live workers take at once (each worker's presence key holds its own)."""
    keys = [key async for key in redis.scan_iter(match=presence_prefix(queue.epoch) + "*", count=1000)]
    if not keys:
        return 0
    total = 0
    for value in await redis.mget(keys):
        try:
            total += max(0, int(value)) if value is not None else 0
        except ValueError:
            total += 1  # a worker of an older version announces "1"
    return total


def _key(row: asyncpg.Record) -> Key:
    return (row["project_id"], row["clip_id"], row["run"], row["attempt"])


def _waiting(row: asyncpg.Record) -> Waiting:
    return Waiting(
        project_id=row["project_id"], clip_id=row["clip_id"], run=row["run"], attempt=row["attempt"],
        owner=row["owner"] or "", priority=row["priority"], order=row["position"],
    )  # fmt: skip


async def admit(redis: ArqRedis, queue: JobQueue, item: Waiting, *, wake: bool = False) -> bool:
    """Put the attempt's job in the queue under its own id. arq refuses an id it still holds a job or a result for:
    a job that is not in the queue any more but left a result ran without starting the attempt (its worker lost
    PostgreSQL, say); that result says nothing the log does not, so it is dropped and the attempt admitted again."""
    job = queue.job_id(*item.key)
    if await reactor.enqueue_attempt(redis, queue, *item.key, None, publish=wake):
        return True
    if await redis.zscore(queue.name, job) is not None:
        return False  # admitted meanwhile
    await redis.delete(result_key_prefix + job, job_key_prefix + job)
    return await reactor.enqueue_attempt(redis, queue, *item.key, None, publish=wake)


class Dispatcher:
    """The leader's pass (`step`) and what it keeps between passes: the batch share's count, whose turn it is
    (owners and projects last served), the capacity read last, when the next retry falls due. All of it may be lost: a new leader starts from the log and the queue."""

    def __init__(self) -> None:
        self.queue: JobQueue | None = None  # the log's, read once
        self.since_batch = 0
        self.turns = Turns()
        self._capacity = 0
        self._capacity_read = -1e9
        self._next_due: float | None = None  # time.monotonic() of the next retry's not_before
        self._checkpointed = -1e9
        self._checkpoint = 0

    def timeout(self) -> float:
        """How long the leader may sleep before the next pass."""
        if self._next_due is None:
            return PERIOD
        return max(0.0, min(PERIOD, self._next_due - time.monotonic()))

    async def capacity(self, redis: ArqRedis, queue: JobQueue) -> int:
        """The capacity read last, read first when it is none (no worker seen yet)."""
        if self._capacity == 0:
            await self._read_capacity(redis, queue)
        return self._capacity

    async def _read_capacity(self, redis: ArqRedis, queue: JobQueue) -> None:
        self._capacity, self._capacity_read = await live_capacity(redis, queue), time.monotonic()

    async def step(self, services: Services) -> bool:
        """One pass; False: nothing more to do until the next wake-up."""
        assert services.redis is not None
        settings = services.settings
        redis = services.redis
        if self.queue is None:
            self.queue = await reactor.job_queue(services.pool)
        queue = self.queue
        capacity = await self.capacity(redis, queue)
        queued = await queued_attempts(redis, queue)
        now = utcnow()
        columns = list(zip(*queued)) if queued else [[], [], [], []]
        rows = await services.pool.fetch(_SNAPSHOT, *[list(c) for c in columns], max(capacity, 1), now)
        in_flight: list[InFlight] = []
        due: list[Waiting] = []
        head = 0
        self._next_due = None
        for row in rows:
            kind = row["kind"]
            if kind in ("running", "admitted"):
                in_flight.append(InFlight(row["owner"] or "", row["project_id"]))
            elif kind == "due":
                due.append(_waiting(row))
            elif kind == "next" and row["at"] is not None:
                self._next_due = time.monotonic() + (row["at"] - now).total_seconds()
            elif kind == "head":
                head = row["position"] or 0
        limits = Limits(project=settings.project_concurrency, owner=settings.owner_concurrency)
        selection = select(due, in_flight, capacity - len(in_flight), limits, self.since_batch, self.turns)
        admitted, woken = 0, False
        for i, item in enumerate(selection.admit):
            last = i == len(selection.admit) - 1  # wakes the idle workers in the same call
            done = await admit(redis, queue, item, wake=last)
            admitted += done
            woken = done and last
        self.since_batch, self.turns = selection.since_batch, selection.turns
        if admitted and not woken:
            await redis.publish(reactor.WAKE_CHANNEL, "1")
        # After the admissions, off their path: a worker that came or went counts from the next pass on.
        if time.monotonic() - self._capacity_read > CAPACITY_TTL:
            await self._read_capacity(redis, queue)
        await self._advance_checkpoint(services, head)
        return False

    async def _advance_checkpoint(self, services: Services, head: int) -> None:
        """Keep the reactor's checkpoint (health's `reactor.lag_events`) at the log's head the last pass saw."""
        now = time.monotonic()
        if head > self._checkpoint and now - self._checkpointed >= CHECKPOINT_EVERY:
            await reactor.save_checkpoint(services.pool, head)
            self._checkpoint, self._checkpointed = head, now


async def follow(services: Services) -> None:
    dispatcher = Dispatcher()
    await reactor.run_as_leader(services, reactor.LEADER_LOCK, dispatcher.step, dispatcher.timeout, "dispatcher")


async def release_stuck_admissions(services: Services) -> int:
    """For the reaper: an admitted attempt whose job a worker took more than `requeue_after` seconds ago without
    starting it (a live worker starts within milliseconds: that one died in between) leaves the queue, so that the
    next pass admits it again, under the same job id."""
    assert services.redis is not None
    settings = services.settings
    redis = services.redis
    queue = await reactor.job_queue(services.pool)
    queued = await queued_attempts(redis, queue)
    if not queued:
        return 0
    rows = await services.pool.fetch(
        "SELECT project_id, clip_id, run, attempt FROM clips WHERE status IN ('pending', 'retrying') AND not_before < $1",
        utcnow() - timedelta(seconds=settings.requeue_after),
    )
    marked_for = reactor.job_timeout(settings) + 10  # arq's in-progress key lives this long from when it is taken
    released = 0
    for row in rows:
        if _key(row) not in queued:
            continue
        job = queue.job_id(*_key(row))
        left = await redis.pttl(in_progress_key_prefix + job)
        if left > 0 and marked_for - left / 1000 > settings.requeue_after:
            await redis.zrem(queue.name, job)
            await redis.delete(job_key_prefix + job, in_progress_key_prefix + job, result_key_prefix + job)
            released += 1
            log.warning("released attempt %s.%s of %s/%s: taken by a worker that never started it",
                        row["run"], row["attempt"], row["project_id"], row["clip_id"])  # fmt: skip
    return released


# For health and /metrics -------------------------------------------------------------

_WAITING = """
SELECT c.project_id, c.clip_id, c.run, c.attempt, c.priority, c.position, p.owner, c.not_before
FROM clips c LEFT JOIN projects p USING (project_id)
WHERE c.status IN ('pending', 'retrying') AND (c.not_before IS NULL OR c.not_before <= $1)
"""


class Backlog(msgspec.Struct, frozen=True):
    waiting: dict[str, int]  # attempts due and not admitted yet, per priority
    oldest_wait_seconds: float  # how long the one due longest has waited since it fell due


async def backlog(services: Services) -> Backlog:
    """The attempts waiting for admission (due, not in the queue), per priority, and the oldest one's wait."""
    assert services.redis is not None
    queued = await queued_attempts(services.redis, await reactor.job_queue(services.pool))
    now = utcnow()
    counts = {"interactive": 0, "batch": 0}
    oldest: datetime | None = None
    for row in await services.pool.fetch(_WAITING, now):
        if _key(row) in queued:
            continue
        counts[row["priority"]] = counts.get(row["priority"], 0) + 1
        due_at = row["not_before"]
        if due_at is not None and (oldest is None or due_at < oldest):
            oldest = due_at
    wait = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
    return Backlog(waiting=counts, oldest_wait_seconds=round(wait, 3))
