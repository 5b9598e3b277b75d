"""Where a pending clip stands in the queue, and how long it may take: read from the clip projection and the log.

`queue_positions` is the one place that knows the dispatch order (fair dispatch replaces its ordering rule).
"""

from __future__ import annotations

from typing import Sequence

import asyncpg
import msgspec

RECENT_ATTEMPTS = 20  # completed attempts whose durations make the estimate


class QueueEstimate(msgspec.Struct, frozen=True):
    positions: dict[str, int]  # clip id -> attempts ahead of it
    typical_seconds: float | None  # median duration of recent completed attempts (None: none yet)
    running: int  # attempts running now, anywhere

    def eta_seconds(self, clip_id: str) -> float | None:
        """Until the clip is extracted: the attempts ahead of it, run `running` at a time (at least one), then its
        own, each taking `typical_seconds`."""
        ahead = self.positions.get(clip_id)
        if ahead is None or self.typical_seconds is None:
            return None
        return round((ahead // max(1, self.running) + 1) * self.typical_seconds, 1)


async def queue_positions(db: asyncpg.Connection | asyncpg.Pool, project_id: str, clip_ids: Sequence[str]) -> dict[str, int]:
    """Attempts ahead of each of these pending clips: every attempt waiting to start that is due (pending, or
    retrying past its `not_before`) and comes first in the dispatch order, which is arq's: by the time the attempt
    was due (`not_before`, its job's score), ties by project and clip."""
    if not clip_ids:
        return {}
    rows = await db.fetch(
        """
        SELECT clip_id, ahead FROM (
            SELECT project_id, clip_id,
                   row_number() OVER (ORDER BY not_before, project_id, clip_id) - 1 AS ahead
            FROM clips
            WHERE status = 'pending' OR (status = 'retrying' AND not_before <= now())
        ) waiting
        WHERE project_id = $1 AND clip_id = ANY($2::text[])
        """,
        project_id,
        list(clip_ids),
    )
    return {r["clip_id"]: r["ahead"] for r in rows}


async def estimate(db: asyncpg.Connection | asyncpg.Pool, project_id: str, clip_ids: Sequence[str]) -> QueueEstimate:
    """Positions of these pending clips of a project, with what their ETA is made of."""
    if not clip_ids:
        return QueueEstimate({}, None, 0)
    positions = await queue_positions(db, project_id, clip_ids)
    row = await db.fetchrow(
        """
        SELECT (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY elapsed) FROM (
                    SELECT (data->>'elapsed_seconds')::float8 AS elapsed FROM events
                    WHERE type = 'extraction.completed' ORDER BY position DESC LIMIT $1) recent) AS typical,
               (SELECT count(*) FROM clips WHERE status = 'running') AS running
        """,
        RECENT_ATTEMPTS,
    )
    return QueueEstimate(positions, row["typical"], row["running"])
