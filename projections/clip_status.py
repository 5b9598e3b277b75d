"""The clip-status projection: one row per clip, written in the same transaction as the clip's events.

The row stores the whole `ClipState` (jsonb) plus the columns the queue and the reaper query. A rebuild folds
every stream from the log and must produce the same rows (`rebuild_differences`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import asyncpg
import msgspec

from domain.clip import ClipState
from eventlog.store import StoredEvent

_decoder = msgspec.json.Decoder(ClipState)

_UPSERT = """
INSERT INTO clips (project_id, clip_id, version, status, run, attempt, not_before, deadline_at, status_since,
                   position, created_at, updated_at, state, priority)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $15)
ON CONFLICT (project_id, clip_id) DO UPDATE SET
    version = EXCLUDED.version, status = EXCLUDED.status, run = EXCLUDED.run, attempt = EXCLUDED.attempt,
    not_before = EXCLUDED.not_before, deadline_at = EXCLUDED.deadline_at, status_since = EXCLUDED.status_since,
    position = EXCLUDED.position, updated_at = EXCLUDED.updated_at, state = EXCLUDED.state,
    priority = EXCLUDED.priority
WHERE clips.version = $14
"""


def state_from_json(value: dict | str | bytes) -> ClipState:
    if isinstance(value, dict):
        return msgspec.convert(value, ClipState)
    return _decoder.decode(value)


async def load(conn: asyncpg.Connection | asyncpg.Pool, project_id: str, clip_id: str) -> ClipState:
    value = await conn.fetchval("SELECT state FROM clips WHERE project_id = $1 AND clip_id = $2", project_id, clip_id)
    return state_from_json(value) if value is not None else ClipState(project_id=project_id, clip_id=clip_id)


async def list_project(conn: asyncpg.Connection | asyncpg.Pool, project_id: str) -> list[tuple[ClipState, int]]:
    rows = await conn.fetch(
        "SELECT state, position FROM clips WHERE project_id = $1 ORDER BY created_at, clip_id", project_id
    )
    return [(state_from_json(r["state"]), r["position"]) for r in rows]


async def save(conn: asyncpg.Connection, state: ClipState, previous_version: int, position: int) -> bool:
    """Write the row; False when another writer moved it first (the caller's transaction must roll back)."""
    result = await conn.execute(
        _UPSERT,
        state.project_id,
        state.clip_id,
        state.version,
        state.status,
        state.run,
        state.attempt,
        state.not_before,
        state.deadline_at,
        state.status_since,
        position,
        state.created_at,
        state.updated_at,
        msgspec.to_builtins(state),
        previous_version,
        state.priority,
    )
    return result.endswith(" 1")


def fold_streams(events: Sequence[StoredEvent]) -> dict[tuple[str, str], tuple[ClipState, int]]:
    """Each clip's state after its last event, and that event's position."""
    from projections.replay import replay

    return {(s.event.project_id, s.event.clip_id): (s.state, s.event.position) for s in replay(events)}


async def rebuild_differences(conn: asyncpg.Connection) -> dict[str, list[tuple[str, str]]]:
    """Fold the whole log and compare with the stored rows: {"missing": [...], "extra": [...], "different": [...]}."""
    from eventlog.store import read_after

    events: list[StoredEvent] = []
    position = 0
    while batch := await read_after(conn, position, 5000):
        events.extend(batch)
        position = batch[-1].position
    rebuilt = fold_streams(events)
    stored: dict[tuple[str, str], tuple[ClipState, int]] = {}
    for row in await conn.fetch("SELECT project_id, clip_id, state, position FROM clips"):
        stored[(row["project_id"], row["clip_id"])] = (state_from_json(row["state"]), row["position"])
    report: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key in rebuilt.keys() - stored.keys():
        report["missing"].append(key)
    for key in stored.keys() - rebuilt.keys():
        report["extra"].append(key)
    for key in rebuilt.keys() & stored.keys():
        if rebuilt[key] != stored[key]:
            report["different"].append(key)
    return dict(report)
