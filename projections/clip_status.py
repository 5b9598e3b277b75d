"""The clip-status projection: one row per clip, written in the same transaction as the clip's events.

The row stores the whole `ClipState` (`json`: the text as msgspec writes it, which PostgreSQL only checks, where
`jsonb` built its binary form at every write, the largest cost of a rebuild's COPY; migrations/020) plus the columns
the queue and the reaper query. A rebuild folds
every stream from the log and must produce the same rows (projections/rebuild.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterable, Sequence

import asyncpg
import msgspec

from domain.clip import ClipState
from eventlog import store
from eventlog.store import StoredEvent

_decoder = msgspec.json.Decoder(ClipState)

def upsert_sql(rows: str, previous_version: str) -> str:
    """The clip row's upsert: `rows` gives the values in COLUMNS order (a VALUES list or a query), written only where
    the row is still at `previous_version` (a parameter) or new."""
    return f"""
INSERT INTO clips (project_id, clip_id, version, status, run, attempt, not_before, deadline_at, status_since,
                   position, created_at, updated_at, state, priority)
{rows}
ON CONFLICT (project_id, clip_id) DO UPDATE SET
    version = EXCLUDED.version, status = EXCLUDED.status, run = EXCLUDED.run, attempt = EXCLUDED.attempt,
    not_before = EXCLUDED.not_before, deadline_at = EXCLUDED.deadline_at, status_since = EXCLUDED.status_since,
    position = EXCLUDED.position, updated_at = EXCLUDED.updated_at, state = EXCLUDED.state,
    priority = EXCLUDED.priority
WHERE clips.version = {previous_version}
"""


_UPSERT = upsert_sql("VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)", "$15")


# A clip's state and the position of its last event (`load_with_position`, `usecases.clips.handle`, the API)
READ_ROW = "SELECT state, position FROM clips WHERE project_id = $1 AND clip_id = $2"

COLUMNS = ("project_id", "clip_id", "version", "status", "run", "attempt", "not_before", "deadline_at", "status_since",
           "position", "created_at", "updated_at", "state", "priority")  # fmt: skip
# The columns the service's queries filter or sort on (a rebuild gathers the planner's statistics of these).
QUERIED = ("project_id", "clip_id", "status", "status_since", "not_before", "created_at")
_encode = msgspec.json.encode


def values(state: ClipState, position: int) -> tuple:
    """The clip's row, in COLUMNS order (the state as builtins, as `save` writes it)."""
    return (state.project_id, state.clip_id, state.version, state.status, state.run, state.attempt, state.not_before,
            state.deadline_at, state.status_since, position, state.created_at, state.updated_at,
            msgspec.to_builtins(state), state.priority)  # fmt: skip


def _time(value: datetime | None) -> bytes:
    return b"" if value is None else _encode(value)[1:-1]  # RFC 3339 without its quotes; b"": NULL in RAW_TEXT_COPY


def copy_line(state: ClipState, position: int) -> bytes:
    """The clip's row (`values`) as one line for `store.copy_lines` (a rebuild writes one per clip: kept lean)."""
    return store.RAW_TEXT_DELIMITER.join((
        state.project_id.encode(), state.clip_id.encode(), b"%d" % state.version, state.status.encode(),
        b"%d" % state.run, b"%d" % state.attempt, _time(state.not_before), _time(state.deadline_at),
        _time(state.status_since), b"%d" % position, _time(state.created_at), _time(state.updated_at), _encode(state),
        state.priority.encode(),
    )) + b"\n"  # fmt: skip


async def copy_rows(conn: asyncpg.Connection, table: str, rows: Iterable[tuple[ClipState, int]]) -> None:
    """Write `(state, position)` rows into `table` (`clips`, or a table like it) with COPY."""
    await store.copy_lines(conn, table, COLUMNS, (copy_line(state, position) for state, position in rows))


def state_from_json(value: dict | str | bytes) -> ClipState:
    if isinstance(value, dict):
        return msgspec.convert(value, ClipState)
    return _decoder.decode(value)


async def load(conn: asyncpg.Connection | asyncpg.Pool, project_id: str, clip_id: str) -> ClipState:
    return (await load_with_position(conn, project_id, clip_id))[0]


async def load_with_position(
    conn: asyncpg.Connection | asyncpg.Pool, project_id: str, clip_id: str
) -> tuple[ClipState, int]:
    """The clip's state and the position of its last event (0 for a clip that does not exist)."""
    row = await conn.fetchrow(READ_ROW, project_id, clip_id)
    if row is None:
        return ClipState(project_id=project_id, clip_id=clip_id), 0
    return state_from_json(row["state"]), row["position"]


async def list_project(conn: asyncpg.Connection | asyncpg.Pool, project_id: str) -> list[tuple[ClipState, int]]:
    rows = await conn.fetch(
        "SELECT state, position FROM clips WHERE project_id = $1 ORDER BY created_at, clip_id", project_id
    )
    return [(state_from_json(r["state"]), r["position"]) for r in rows]


async def save(conn: asyncpg.Connection, state: ClipState, previous_version: int, position: int) -> bool:
    """Write the row; False when another writer moved it first (the caller's transaction must roll back)."""
    result = await conn.execute(_UPSERT, *values(state, position), previous_version)
    return result.endswith(" 1")
