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
   `clips_rebuild` to `clips`, drop the old table, give the new indexes (built after the copy, like the old
   table's) the old names. Readers and appenders that
   waited go on against the new table: PostgreSQL looks a name up again once the lock it waited for is granted, and
   re-plans a prepared statement whose table changed (the columns are the same, so it keeps its result type).

The lock order (events, then clips) is every appender's, so the swap cannot deadlock with them.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import asyncpg
import msgspec

from domain.clip import ClipState, evolve
from domain.errors import Conflict
from domain.events import decode_json
from eventlog import store
from projections import clip_status
from eventlog import locks

NEW_TABLE = "clips_rebuild"
_LOCK = locks.REBUILD  # one rebuild at a time
_PAGE = 20_000
_READ = (
    "SELECT position, stream, type, schema_version, data::text, recorded_at FROM events "
    "WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3"
)

Folded = dict[str, tuple[ClipState, int]]  # stream -> (state after its last event, that event's position)
Progress = Callable[[int], None]


async def fold(
    conn: asyncpg.Connection, folded: Folded, after: int, upto: int, on_progress: Progress = lambda n: None
) -> set[str]:
    """Fold the events in `(after, upto]` into `folded`; the streams that changed. The next page is read while this
    one is folded (the database and this process work at the same time)."""
    changed: set[str] = set()
    get, decode = folded.get, decode_json
    rows = await conn.fetch(_READ, after, upto, _PAGE)
    while rows:
        following = asyncio.ensure_future(conn.fetch(_READ, rows[-1][0], upto, _PAGE)) if len(rows) == _PAGE else None
        for position, stream, type_, version, data, at in rows:
            previous = get(stream)
            if previous is None:
                project_id, clip_id = stream.split("/", 1)  # ids never hold a "/" (API.md)
                state = ClipState(project_id=project_id, clip_id=clip_id)
            else:
                state = previous[0]
            folded[stream] = (evolve(state, decode(type_, version, data), at), position)
        changed.update(r[1] for r in rows)
        on_progress(len(rows))
        rows = await following if following is not None else []
    return changed


async def _upsert(conn: asyncpg.Connection, folded: Folded, streams: set[str]) -> None:
    if not streams:
        return
    keys = [(folded[s][0].project_id, folded[s][0].clip_id) for s in streams]
    await conn.executemany(f"DELETE FROM {NEW_TABLE} WHERE project_id = $1 AND clip_id = $2", keys)
    await clip_status.copy_rows(conn, NEW_TABLE, (folded[s] for s in streams))


async def _copy_indexes(conn: asyncpg.Connection, source: str, target: str) -> None:
    """Give `target` the indexes and the primary key or unique constraints of `source`, named `<name>_rebuild`."""
    for name, definition, constraint in await conn.fetch(
        "SELECT i.relname, pg_get_indexdef(x.indexrelid), pg_get_constraintdef(c.oid) FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid "
        "AND c.conrelid = x.indrelid WHERE x.indrelid = $1::regclass",
        source,
    ):
        if constraint is not None:
            await conn.execute(f'ALTER TABLE {target} ADD CONSTRAINT "{name}_rebuild" {constraint}')
        else:
            shape = definition.split(" USING ", 1)[1]
            unique = "UNIQUE " if definition.startswith("CREATE UNIQUE") else ""
            await conn.execute(f'CREATE {unique}INDEX "{name}_rebuild" ON {target} USING {shape}')


async def _take_index_names(conn: asyncpg.Connection, target: str) -> None:
    """After the swap: the new table's `<name>_rebuild` indexes (and constraints) take their names back."""
    for (name,) in await conn.fetch(
        "SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = $1::regclass "
        "AND i.relname LIKE '%\\_rebuild'",
        target,
    ):
        await conn.execute(f'ALTER INDEX "{name}" RENAME TO "{name.removesuffix("_rebuild")}"')


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
        raise Conflict("another rebuild is running")
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
        on_count(upto)  # about the number of events (a rolled-back append leaves a gap in the positions)
        await fold(conn, folded, 0, upto, count(False))
        await conn.execute(f"DROP TABLE IF EXISTS {NEW_TABLE}")
        # The rows first, then the indexes (built once, not row by row), then the planner's statistics (of the
        # columns queries filter on: not of the jsonb state, whose sampling would cost more than the copy).
        await conn.execute(f"CREATE TABLE {NEW_TABLE} (LIKE clips INCLUDING ALL EXCLUDING INDEXES)")
        await clip_status.copy_rows(conn, NEW_TABLE, folded.values())
        await _copy_indexes(conn, "clips", NEW_TABLE)
        await conn.execute(f"ANALYZE {NEW_TABLE} ({', '.join(c for c in clip_status.COLUMNS if c != 'state')})")
        # What was appended meanwhile, still without a lock: the tail under the lock stays short.
        caught_up = await store.head_position(conn)
        await _upsert(conn, folded, await fold(conn, folded, upto, caught_up, count(False)))
        started = clock()
        async with conn.transaction():
            await conn.execute("LOCK TABLE events IN SHARE MODE")
            head = await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
            await _upsert(conn, folded, await fold(conn, folded, caught_up, head, count(True)))
            await conn.execute("LOCK TABLE clips IN ACCESS EXCLUSIVE MODE")
            await conn.execute("ALTER TABLE clips RENAME TO clips_replaced")
            await conn.execute(f"ALTER TABLE {NEW_TABLE} RENAME TO clips")
            await conn.execute("DROP TABLE clips_replaced")
            await _take_index_names(conn, "clips")
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
