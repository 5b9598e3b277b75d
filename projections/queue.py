"""Where a pending clip stands in the queue, and how long it may take: read from the clip projection and the log.

`queue_positions` is the one place that knows the dispatch order: fair dispatch's rule (domain/dispatch.py), or
first come, first served with CLIPLOG_DISPATCH=fifo.
"""

from __future__ import annotations

from typing import Sequence

import asyncpg
import msgspec

from domain.dispatch import InFlight, Waiting, admission_order

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


_WAITING = """
SELECT c.project_id, c.clip_id, c.run, c.attempt, c.priority, c.position, c.status, p.owner
FROM clips c LEFT JOIN projects p USING (project_id)
WHERE c.status IN ('pending', 'running') OR (c.status = 'retrying' AND c.not_before <= now())
"""


async def queue_positions(
    db: asyncpg.Connection | asyncpg.Pool, project_id: str, clip_ids: Sequence[str], *, fair: bool = True
) -> dict[str, int]:
    """Attempts ahead of each of these pending clips among the attempts waiting to start that are due (pending, or
    retrying past its `not_before`). With fair dispatch, in the order of its rule (domain/dispatch.py) from the
    attempts running now, as if none of them ended meanwhile and without the concurrency limits, which only hold a
    user's or project's own work back (an attempt already admitted to the queue counts as waiting: the rule put it
    first). First come, first served: arq's order, by the time the attempt was due, ties by project and clip."""
    if not clip_ids:
        return {}
    if fair:
        return await _fair_positions(db, project_id, clip_ids)
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


async def _fair_positions(db: asyncpg.Connection | asyncpg.Pool, project_id: str, clip_ids: Sequence[str]) -> dict[str, int]:
    waiting: list[Waiting] = []
    running: list[InFlight] = []
    targets: dict[tuple[str, str, int, int], str] = {}
    wanted = set(clip_ids)
    for r in await db.fetch(_WAITING):
        if r["status"] == "running":
            running.append(InFlight(r["owner"] or "", r["project_id"]))
            continue
        item = Waiting(project_id=r["project_id"], clip_id=r["clip_id"], run=r["run"], attempt=r["attempt"],
                       owner=r["owner"] or "", priority=r["priority"], order=r["position"])  # fmt: skip
        waiting.append(item)
        if r["project_id"] == project_id and r["clip_id"] in wanted:
            targets[item.key] = r["clip_id"]
    positions: dict[str, int] = {}
    for ahead, (item, _, _) in enumerate(admission_order(waiting, running)):  # one pass for all of them
        if item.key in targets:
            positions[targets[item.key]] = ahead
            if len(positions) == len(targets):
                break
    return positions


async def estimate(
    db: asyncpg.Connection | asyncpg.Pool, project_id: str, clip_ids: Sequence[str], *, fair: bool = True
) -> QueueEstimate:
    """Positions of these pending clips of a project, with what their ETA is made of."""
    if not clip_ids:
        return QueueEstimate({}, None, 0)
    positions = await queue_positions(db, project_id, clip_ids, fair=fair)
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
