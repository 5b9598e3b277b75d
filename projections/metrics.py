"""The extraction-metrics projection: asynchronous, checkpointed, rebuildable from the log (DESIGN.md).

What `/metrics` and health's rates show is kept in two small tables (migrations/016): `metric_counts`, counters of
finished attempts by outcome, the completed attempts' duration histogram (cumulative per bucket bound, with sum
and count) and clips by status; and `metric_recent_attempts`, the finished attempts of the last `WINDOW_SECONDS`
(pruned past it). Reading them costs the same whatever the length of the log.

A follower (`handlers/metrics.py`, leader-elected like the reactor) calls `catch_up`: in one transaction, under
an advisory lock (one writer at a time), it reads the checkpoint and the events after it (up to the safe horizon), adds their `tally` to the tables and moves
the checkpoint, so a batch is counted exactly once, whoever runs it and whenever it crashes. A clip's status
before an event is the `clip_status` of the clip's previous event (by its stream's version: an index), so the
clips gauge is a fold of the log too. `tally` is pure; `rebuild_differences` folds the whole log with it and
compares (`cliplog check`); `reset` empties the projection, which the follower then rebuilds from the log.

Hand-backs (`failed` with code `worker_shutdown`, a deploy) are not failed attempts and are not counted.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Iterable, Mapping, Sequence

import asyncpg
import msgspec

from domain.clip import HANDED_BACK
from eventlog import store
from eventlog.store import StoredEvent
from eventlog import locks

CHECKPOINT = "metrics"
WINDOW_SECONDS = 3600
BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
BATCH = 5000
OUTCOMES = ("completed", "failed", "timed_out", "cancelled")

Key = tuple[str, str]  # (metric, label)


class Tally(msgspec.Struct, frozen=True):
    """What a run of events adds to the projection."""

    counts: dict[Key, float]  # deltas of `metric_counts`
    attempts: list[tuple[int, datetime, str, float | None]]  # (position, recorded_at, outcome, elapsed_seconds)


def outcome(event: StoredEvent) -> str | None:
    """The finished attempt's outcome (one of OUTCOMES), None for any other event."""
    if event.type in ("extraction.completed", "extraction.timed_out", "extraction.cancelled"):
        return event.type.removeprefix("extraction.")
    if event.type == "extraction.failed" and event.data.get("code") != HANDED_BACK:
        return "failed"
    return None


def tally(events: Iterable[StoredEvent], previous: Mapping[str, str]) -> Tally:
    """Fold `events` (in position order) into deltas; `previous` maps a stream to the clip's status before the
    first of its events here (a stream absent from it is a new clip)."""
    counts: dict[Key, float] = defaultdict(float)
    status = dict(previous)
    attempts = []
    for event in events:
        before = status.get(event.stream)
        if before != event.clip_status:
            if before is not None:
                counts[("clips", before)] -= 1
            counts[("clips", event.clip_status)] += 1
        status[event.stream] = event.clip_status
        finished = outcome(event)
        if finished is None:
            continue
        counts[("attempts", finished)] += 1
        elapsed = event.data.get("elapsed_seconds")
        seconds = float(elapsed) if isinstance(elapsed, (int, float)) else None
        if finished == "completed" and seconds is not None:
            counts[("duration", "count")] += 1
            counts[("duration", "sum")] += seconds
            for bound in BUCKETS:
                if seconds <= bound:
                    counts[("duration_le", f"{bound:g}")] += 1
        attempts.append((event.position, event.recorded_at, finished, seconds))
    return Tally({key: value for key, value in counts.items() if value}, attempts)


async def _previous_statuses(conn: asyncpg.Connection, events: Sequence[StoredEvent]) -> dict[str, str]:
    first: dict[str, int] = {}
    for event in events:
        first.setdefault(event.stream, event.version)
    earlier = [(stream, version - 1) for stream, version in first.items() if version > 1]
    if not earlier:
        return {}
    rows = await conn.fetch(
        "SELECT e.stream, e.clip_status FROM unnest($1::text[], $2::int[]) AS k(stream, version) "
        "JOIN events e ON e.stream = k.stream AND e.version = k.version",
        [stream for stream, _ in earlier],
        [version for _, version in earlier],
    )
    return {row["stream"]: row["clip_status"] for row in rows}


_ADD_COUNTS = """
INSERT INTO metric_counts (metric, label, value)
SELECT * FROM unnest($1::text[], $2::text[], $3::float8[])
ON CONFLICT (metric, label) DO UPDATE SET value = metric_counts.value + EXCLUDED.value
"""

_ADD_ATTEMPTS = """
INSERT INTO metric_recent_attempts (position, recorded_at, outcome, elapsed_seconds)
SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::float8[]) AS a(p, r, o, e)
WHERE a.r > now() - make_interval(secs => $5)
ON CONFLICT (position) DO NOTHING
"""

_PRUNE = "DELETE FROM metric_recent_attempts WHERE recorded_at <= now() - make_interval(secs => $1)"
_STALE = "SELECT EXISTS (SELECT 1 FROM metric_recent_attempts WHERE recorded_at <= now() - make_interval(secs => $1))"


WRITER_LOCK = locks.METRICS_WRITER  # one batch at a time, whoever runs it (a transaction-level advisory lock)


async def catch_up(pool: asyncpg.Pool, batch: int = BATCH) -> int:
    """Project the next `batch` events after the checkpoint, in one transaction with the checkpoint; returns how
    many were read (fewer than `batch`: caught up).

    Writers take turns on an advisory lock rather than a row lock, and write only after reading: the transaction
    gets its id (a row lock would take one at once) for the few milliseconds of its writes. A transaction with an id
    that ends while a reader computes the safe horizon holds that reader back until its next read (migration 005),
    so a follower woken by every append should hold one as briefly as it can."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITER_LOCK)
        position = await conn.fetchval("SELECT position FROM checkpoints WHERE name = $1", CHECKPOINT) or 0
        events = await store.read_after(conn, position, batch)
        if not events:
            if await conn.fetchval(_STALE, WINDOW_SECONDS):
                await conn.execute(_PRUNE, WINDOW_SECONDS)
            return 0
        done = tally(events, await _previous_statuses(conn, events))
        if done.counts:
            keys = list(done.counts)
            await conn.execute(
                _ADD_COUNTS, [m for m, _ in keys], [label for _, label in keys], [done.counts[k] for k in keys]
            )
        if done.attempts:
            columns = list(zip(*done.attempts))
            await conn.execute(_ADD_ATTEMPTS, *map(list, columns), WINDOW_SECONDS)
        await conn.execute(_PRUNE, WINDOW_SECONDS)
        await conn.execute(
            "INSERT INTO checkpoints (name, position) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
            CHECKPOINT,
            events[-1].position,
        )
        return len(events)


class Snapshot(msgspec.Struct, frozen=True):
    """The projection as one read saw it."""

    counts: dict[Key, float]
    position: int  # the checkpoint: every event up to it is counted

    def get(self, metric: str, label: str) -> float:
        return self.counts.get((metric, label), 0.0)


async def read(db: asyncpg.Pool | asyncpg.Connection) -> Snapshot:
    """The counters and the checkpoint, in one statement (one snapshot)."""
    rows = await db.fetch(
        "SELECT metric, label, value FROM metric_counts "
        "UNION ALL SELECT 'checkpoint', '', position FROM checkpoints WHERE name = $1",
        CHECKPOINT,
    )
    counts = {(r["metric"], r["label"]): r["value"] for r in rows}
    position = int(counts.pop(("checkpoint", ""), 0))
    return Snapshot({key: value for key, value in counts.items() if value}, position)  # a zero row is no row


class Rates(msgspec.Struct, frozen=True):
    completed: int
    failed: int
    timed_out: int
    p50_seconds: float | None
    p95_seconds: float | None


async def recent_rates(db: asyncpg.Pool | asyncpg.Connection, window: float = WINDOW_SECONDS) -> Rates:
    """Finished attempts of the last `window` seconds (at most WINDOW_SECONDS), and the completed ones' p50/p95."""
    row = await db.fetchrow(
        """
        SELECT count(*) FILTER (WHERE outcome = 'completed') AS completed,
               count(*) FILTER (WHERE outcome = 'failed') AS failed,
               count(*) FILTER (WHERE outcome = 'timed_out') AS timed_out,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY elapsed_seconds) FILTER (WHERE outcome = 'completed') AS p50,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY elapsed_seconds) FILTER (WHERE outcome = 'completed') AS p95
        FROM metric_recent_attempts WHERE recorded_at > now() - make_interval(secs => $1)
        """,
        float(window),
    )
    return Rates(row["completed"], row["failed"], row["timed_out"], row["p50"], row["p95"])


async def lag(db: asyncpg.Pool | asyncpg.Connection) -> int:
    """Positions of the log the projection has not counted yet."""
    return await db.fetchval(
        "SELECT greatest(0, coalesce((SELECT max(position) FROM events), 0) "
        "- coalesce((SELECT position FROM checkpoints WHERE name = $1), 0))",
        CHECKPOINT,
    )


async def reset(conn: asyncpg.Connection) -> None:
    """Empty the projection and its checkpoint (in one transaction): the follower rebuilds it from the log."""
    async with conn.transaction():
        await conn.execute("DELETE FROM metric_counts")
        await conn.execute("DELETE FROM metric_recent_attempts")
        await conn.execute("DELETE FROM checkpoints WHERE name = $1", CHECKPOINT)


async def rebuild_differences(conn: asyncpg.Connection) -> list[tuple[str, str, float, float]]:
    """Fold the log up to the stored checkpoint and compare with the stored counters (in one repeatable-read
    transaction): `(metric, label, stored, rebuilt)` for each that differs."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        stored = await read(conn)
        events: list[StoredEvent] = []
        position = 0
        while batch := await store.read_after(conn, position, BATCH):
            events.extend(e for e in batch if e.position <= stored.position)
            if batch[-1].position >= stored.position:
                break
            position = batch[-1].position
    rebuilt = tally(events, {}).counts
    return [
        (metric, label, stored.get(metric, label), rebuilt.get((metric, label), 0.0))
        for metric, label in sorted(stored.counts.keys() | rebuilt.keys())
        if abs(stored.get(metric, label) - rebuilt.get((metric, label), 0.0)) > 1e-6 * max(1.0, abs(rebuilt.get((metric, label), 0.0)))
    ]
