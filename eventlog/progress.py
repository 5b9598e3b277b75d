"""Live progress of running attempts: operational state beside the lease, never an event (DESIGN invariant 9).

The worker writes an attempt's progress into its lease row (`leases.progress_*`, migrations/013) at most once a
second, and the same statement NOTIFYs `PROGRESS_CHANNEL` with the WebSocket message itself, so every API
instance's broker (eventlog/broker.py) can push it to the subscribers who may see the project. The write is made
without waiting for the WAL flush (`synchronous_commit = off`): a progress value lost in a crash costs nothing.
`GET` clip reads the row back (`read`) while the clip is running.
"""

from __future__ import annotations

from datetime import datetime
from typing import Sequence

import asyncpg
import msgspec

PROGRESS_CHANNEL = "cliplog_progress"


class ProgressMessage(msgspec.Struct, tag="progress", tag_field="type", frozen=True, kw_only=True):
    """`{"type": "progress", ...}` on the WebSocket (API.md). No cursor: a client that misses one loses nothing."""

    project_id: str
    clip_id: str
    run: int
    attempt: int
    percent: float
    eta_seconds: float | None


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """A running attempt's progress as `GET` clip shows it."""

    percent: float
    speed: float | None
    eta_seconds: float | None
    updated_at: datetime


_encode = msgspec.json.Encoder().encode
decode_message = msgspec.json.Decoder(ProgressMessage).decode

# One statement, its own transaction: `set_config(..., true)` lasts until that transaction's commit, which then does
# not wait for the WAL flush; the NOTIFY is sent at the same commit.
_RECORD = """
WITH no_flush AS (SELECT set_config('synchronous_commit', 'off', true)),
written AS (
    UPDATE leases SET progress_percent = $5, progress_speed = $6, progress_eta_seconds = $7, progress_at = now()
    WHERE project_id = $1 AND clip_id = $2 AND run = $3 AND attempt = $4
    RETURNING 1
)
SELECT pg_notify($8, $9) FROM written, no_flush
"""


async def record(pool: asyncpg.Pool, message: ProgressMessage, speed: float | None) -> bool:
    """Store `message`'s progress in its attempt's lease row and announce it; False when the lease row is another
    attempt's (the attempt is over: nothing is written or sent)."""
    row = await pool.fetchrow(
        _RECORD,
        message.project_id,
        message.clip_id,
        message.run,
        message.attempt,
        message.percent,
        speed,
        message.eta_seconds,
        PROGRESS_CHANNEL,
        _encode(message).decode(),
    )
    return row is not None


async def read(
    db: asyncpg.Connection | asyncpg.Pool, project_id: str, attempts: Sequence[tuple[str, int, int]]
) -> dict[str, Progress]:
    """The progress of these `(clip_id, run, attempt)` of a project, by clip id (attempts with none left out)."""
    if not attempts:
        return {}
    rows = await db.fetch(
        """
        SELECT l.clip_id, l.progress_percent, l.progress_speed, l.progress_eta_seconds, l.progress_at
        FROM leases l JOIN unnest($2::text[], $3::int[], $4::int[]) AS a(clip_id, run, attempt)
             ON l.clip_id = a.clip_id AND l.run = a.run AND l.attempt = a.attempt
        WHERE l.project_id = $1 AND l.progress_at IS NOT NULL
        """,
        project_id,
        [a[0] for a in attempts],
        [a[1] for a in attempts],
        [a[2] for a in attempts],
    )
    return {
        r["clip_id"]: Progress(
            percent=r["progress_percent"],
            speed=r["progress_speed"],
            eta_seconds=r["progress_eta_seconds"],
            updated_at=r["progress_at"],
        )
        for r in rows
    }
