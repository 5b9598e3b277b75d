"""Rebuild every projection from the log, into new tables swapped in while the API serves and writers append; or
compare (`drift`).

The projections: the clip-status table `clips` (projections/clip_status.py), the only table derived from the log
(`projects` and `api_tokens` are not derived from events; `leases` and `checkpoints` are operational state).

`rebuild` folds the log up to its safe horizon into memory with the service's own `evolve`, COPYs the rows into
`clips_rebuild` (a table LIKE `clips`), folds what was appended meanwhile, then swaps in one short transaction:

1. `LOCK TABLE events IN SHARE MODE`: it waits for every appending transaction in flight and makes new ones wait
   before they insert. Appenders write their clip's row in the same transaction as its events, so from here every
   event is committed and every row written, and nothing moves.
2. The tail (the events since the last fold) is folded into `clips_rebuild`.
3. `LOCK TABLE clips IN ACCESS EXCLUSIVE MODE` (readers wait milliseconds), rename `clips` away and
   `clips_rebuild` to `clips`, drop the old table, give the new indexes the old names. Readers and appenders that
   waited go on against the new table: PostgreSQL looks a name up again once the lock it waited for is granted, and
   re-plans a prepared statement whose table changed (the columns are the same, so it keeps its result type).

The lock order (events, then clips) is every appender's, so the swap cannot deadlock with them.
"""

from __future__ import annotations

from typing import Callable

import asyncpg
import msgspec

from domain.clip import ClipState, evolve
from domain.events import decode_json
from eventlog import store
from projections import clip_status

NEW_TABLE = "clips_rebuild"
_LOCK = 72617  # one rebuild at a time (advisory lock key; 72616 is the position allocator's)
_PAGE = 20_000
_READ = (
    "SELECT position, stream, project_id, clip_id, type, schema_version, data::text, recorded_at FROM events "
    "WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3"
)

Folded = dict[str, tuple[ClipState, int]]  # stream -> (state after its last event, that event's position)
Progress = Callable[[int], None]


async def fold(
    conn: asyncpg.Connection, folded: Folded, after: int, upto: int, on_progress: Progress = lambda n: None
) -> set[str]:
    """Fold the events in `(after, upto]` into `folded`; the streams that changed."""
    changed: set[str] = set()
    position = after
    while rows := await conn.fetch(_READ, position, upto, _PAGE):
        for position, stream, project_id, clip_id, type_, version, data, at in rows:
            previous = folded.get(stream)
            state = previous[0] if previous else ClipState(project_id=project_id, clip_id=clip_id)
            folded[stream] = (evolve(state, decode_json(type_, version, data), at), position)
            changed.add(stream)
        on_progress(len(rows))
    return changed


async def _upsert(conn: asyncpg.Connection, folded: Folded, streams: set[str]) -> None:
    if not streams:
        return
    keys = [(folded[s][0].project_id, folded[s][0].clip_id) for s in streams]
    await conn.executemany(f"DELETE FROM {NEW_TABLE} WHERE project_id = $1 AND clip_id = $2", keys)
    await clip_status.copy_rows(conn, NEW_TABLE, (folded[s] for s in streams))


async def _index_names(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    """The table's indexes by what they index (`btree (project_id, clip_id)`, with a WHERE clause if partial)."""
    rows = await conn.fetch(
        "SELECT regexp_replace(pg_get_indexdef(x.indexrelid), '^.* USING ', '') AS shape, i.relname AS name "
        "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = $1::regclass",
        table,
    )
    return {r["shape"]: r["name"] for r in rows}


class Rebuilt(msgspec.Struct, frozen=True):
    events: int
    clips: int
    tail_under_lock: int  # events folded while appenders waited
    swap_started: float  # time.monotonic() when the swap transaction began waiting for its locks, and when it ended
    swap_ended: float


async def rebuild(
    conn: asyncpg.Connection,
    *,
    on_count: Callable[[int], None] = lambda total: None,
    on_progress: Progress = lambda n: None,
    clock: Callable[[], float],
) -> Rebuilt:
    """Recompute `clips` from the log into a new table and swap it in (see the module docstring)."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK):
        raise RuntimeError("another rebuild is running")
    try:
        folded: Folded = {}
        counted = [0, 0]  # events folded in all, and under the swap's lock

        def count(under_lock: bool) -> Progress:
            def add(n: int) -> None:
                counted[0] += n
                counted[1] += n if under_lock else 0
                on_progress(n)

            return add

        upto = await store.head_position(conn)
        on_count(await conn.fetchval("SELECT count(*) FROM events WHERE position <= $1", upto))
        await fold(conn, folded, 0, upto, count(False))
        await conn.execute(f"DROP TABLE IF EXISTS {NEW_TABLE}")
        await conn.execute(f"CREATE TABLE {NEW_TABLE} (LIKE clips INCLUDING ALL)")
        await clip_status.copy_rows(conn, NEW_TABLE, folded.values())
        await conn.execute(f"ANALYZE {NEW_TABLE}")
        # What was appended meanwhile, still without a lock: the tail under the lock stays short.
        caught_up = await store.head_position(conn)
        await _upsert(conn, folded, await fold(conn, folded, upto, caught_up, count(False)))
        started = clock()
        async with conn.transaction():
            await conn.execute("LOCK TABLE events IN SHARE MODE")
            head = await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
            await _upsert(conn, folded, await fold(conn, folded, caught_up, head, count(True)))
            await conn.execute("LOCK TABLE clips IN ACCESS EXCLUSIVE MODE")
            old_names = await _index_names(conn, "clips")
            new_names = await _index_names(conn, NEW_TABLE)
            await conn.execute("ALTER TABLE clips RENAME TO clips_replaced")
            await conn.execute(f"ALTER TABLE {NEW_TABLE} RENAME TO clips")
            await conn.execute("DROP TABLE clips_replaced")
            for shape, name in new_names.items():
                if shape in old_names and old_names[shape] != name:
                    await conn.execute(f'ALTER INDEX "{name}" RENAME TO "{old_names[shape]}"')
        return Rebuilt(counted[0], len(folded), counted[1], started, clock())
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK)


class Drift(msgspec.Struct, frozen=True):
    project_id: str
    clip_id: str
    kind: str  # "missing" (no row), "extra" (a row without events), "different"
    fields: dict[str, tuple[object, object]]  # field -> (stored, rebuilt)


async def drift(
    conn: asyncpg.Connection,
    *,
    on_count: Callable[[int], None] = lambda total: None,
    on_progress: Progress = lambda n: None,
) -> list[Drift]:
    """Fold the whole log and compare with the stored rows, every column and the state in them, both read in one
    snapshot (appenders write a clip's events and its row in one transaction, so a live log shows no drift)."""
    found: list[Drift] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        head = await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
        on_count(await conn.fetchval("SELECT count(*) FROM events"))
        folded: Folded = {}
        await fold(conn, folded, 0, head, on_progress)
        stored = {
            store.stream_name(r["project_id"], r["clip_id"]): r
            for r in await conn.fetch(f"SELECT {', '.join(clip_status.COLUMNS)} FROM clips")
        }
    for stream in sorted(folded.keys() | stored.keys()):
        row, mine = stored.get(stream), folded.get(stream)
        if row is None or mine is None:
            project_id, clip_id = (mine[0].project_id, mine[0].clip_id) if mine else (row["project_id"], row["clip_id"])  # type: ignore[index]
            found.append(Drift(project_id, clip_id, "missing" if row is None else "extra", {}))
            continue
        state, position = mine
        expected = dict(zip(clip_status.COLUMNS, clip_status.values(state, position)))
        fields = {c: (row[c], v) for c, v in expected.items() if c != "state" and row[c] != v}
        kept, rebuilt = row["state"], msgspec.to_builtins(state)
        fields.update({f"state.{k}": (kept.get(k), rebuilt.get(k)) for k in kept.keys() | rebuilt.keys()
                       if kept.get(k) != rebuilt.get(k)})  # fmt: skip
        if fields:
            found.append(Drift(state.project_id, state.clip_id, "different", dict(sorted(fields.items()))))
    return found


async def rebuild_differences(conn: asyncpg.Connection) -> dict[str, list[tuple[str, str]]]:
    """`drift` as {"missing": [(project, clip)...], "extra": [...], "different": [...]} (kinds with none left out)."""
    report: dict[str, list[tuple[str, str]]] = {}
    for d in await drift(conn):
        report.setdefault(d.kind, []).append((d.project_id, d.clip_id))
    return report
