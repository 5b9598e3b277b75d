"""Leases of running attempts: a worker renews its attempt's lease every heartbeat; the reaper times out an attempt
whose lease is too old."""

from __future__ import annotations

import asyncpg

from domain.clip import ClipState


async def renew_lease(db: asyncpg.Connection | asyncpg.Pool, state: ClipState, worker_id: str) -> bool:
    """Renew the attempt's lease; False when it is no longer the clip's running attempt (the reaper or a person
    timed it out), so the worker can stop working on it."""
    result = await db.execute(
        """
        INSERT INTO leases (project_id, clip_id, run, attempt, worker_id, renewed_at)
        SELECT $1, $2, $3, $4, $5, now()
        WHERE EXISTS (SELECT 1 FROM clips WHERE project_id = $1 AND clip_id = $2 AND run = $3 AND attempt = $4
                                             AND status = 'running')
        ON CONFLICT (project_id, clip_id) DO UPDATE
        SET run = EXCLUDED.run, attempt = EXCLUDED.attempt, worker_id = EXCLUDED.worker_id, renewed_at = now()
        """,
        state.project_id,
        state.clip_id,
        state.run,
        state.attempt,
        worker_id,
    )
    return result.endswith(" 1")
