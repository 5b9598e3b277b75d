"""Rebuild every projection from the log, into new tables swapped in while the API serves and writers append; or
compare (`drift`).

The projections: the clip-status table `clips` (projections/clip_status.py), the only table derived from the log
(`projects` and `api_tokens` are not derived from events; `leases` and `checkpoints` are operational state).

`rebuild` folds the log up to its safe horizon in memory with the service's own `evolve` (reading it a page at a
time, each page as one text value: `_READ_TEXT`) and COPYs the rows into
`clips_rebuild` (a table LIKE `clips`, its indexes built after the rows). Given a second connection (`cliplog
rebuild` gives one), the rows are copied while the fold goes on: that connection first reads each stream's last
version (from the `(stream, version)` index alone), and from then on each clip's row is queued for its COPY as soon as
the fold reaches that version, so PostgreSQL parses and writes rows while this process folds. It then folds what was
appended meanwhile, then swaps in one short transaction:

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
import contextlib
import gc
from datetime import datetime
from operator import itemgetter
from typing import AsyncIterator, Awaitable, Callable, Iterator

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
# The same page as one text value, a line per event of its fields joined by \x02, the time in UTC without its zone
# (ISO with DateStyle ISO): asyncpg building a Record per row was the fold's largest cost, and splitting lines in
# Python costs half as much (bench/README.md). Only the stream and the type could hold a newline or a \x02 (JSON
# text escapes them, the others are numbers and times): a page with one (more lines than rows, or a line that is
# not six fields) is read as Records instead, and so is every page when times are not printed as ISO (DateStyle).
_READ_TEXT = (
    "SELECT string_agg(concat_ws(E'\\x02', position, stream, type, schema_version, data::text, "
    "recorded_at AT TIME ZONE 'UTC'), E'\\n' ORDER BY position) AS page, count(*) AS count "
    "FROM (SELECT position, stream, type, schema_version, data, recorded_at FROM events "
    "WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3) AS page"
)
_ISO_DATES = "SELECT current_setting('DateStyle') LIKE 'ISO%'"
# Each stream's last version, read from the (stream, version) index alone (an index-only scan of the whole log).
_LAST_VERSIONS = "SELECT stream, max(version) FROM events GROUP BY stream"

Folded = dict[str, tuple[ClipState, int]]  # stream -> (state after its last event, that event's position)
Progress = Callable[[int], None]


@contextlib.contextmanager
def _without_gc() -> Iterator[None]:
    """The cyclic garbage collector paused: a fold allocates a few objects per event and keeps a state per clip, none
    of them in a cycle, and with the collector on, its full passes over the growing dict of states cost about as much
    as the fold (measured: bench/replay_bench.py). It runs again afterwards, if it ran before."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Finished:
    """Hands a fold's finished clips over while it folds: once `last` (stream -> its last version in the log) is
    known, each clip whose state reaches its last version is final (up to the fold's end: a later event has a higher
    position and a higher version), and its row (`clip_status.copy_line`) is queued for a COPY on another connection,
    a page at a time. The fold calls `page_done` after each page; `know` hands over the clips already final."""

    def __init__(self) -> None:
        self.last: dict[str, int] | None = None
        self.sent: set[str] = set()  # the streams whose row was handed over
        self.pages: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._lines: list[bytes] = []

    def know(self, last: dict[str, int], folded: Folded) -> None:
        self.last = last
        for stream, (state, position) in folded.items():
            if state.version == last.get(stream):
                self.add(stream, state, position)

    def add(self, stream: str, state: ClipState, position: int) -> None:
        self._lines.append(clip_status.copy_line(state, position))
        self.sent.add(stream)

    def page_done(self) -> None:
        if self._lines:
            self.pages.put_nowait(b"".join(self._lines))
            self._lines = []

    async def chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self.pages.get()) is not None:
            yield chunk


Row = tuple[int, str, str, int, str, datetime]  # position, stream, type, schema_version, data, recorded_at


async def _read_records(conn: asyncpg.Connection, after: int, upto: int) -> list[Row]:
    """The page of up to _PAGE events after `after`, up to `upto`."""
    return await conn.fetch(_READ, after, upto, _PAGE)  # type: ignore[return-value]


async def _read_text(conn: asyncpg.Connection, after: int, upto: int) -> list[Row]:
    """`_read_records` through `_READ_TEXT` (the same rows and values)."""
    page, count = await conn.fetchrow(_READ_TEXT, after, upto, _PAGE)  # type: ignore[misc]
    if page is None:
        return []
    lines = page.split("\n")
    if len(lines) != count:
        return await _read_records(conn, after, upto)
    utc = _UTC_SUFFIX
    rows: list[Row] = []
    add = rows.append
    try:
        for line in lines:
            position, stream, type_, version, data, at = line.split("\x02")
            add((int(position), stream, type_, int(version), data, _from_iso(at + utc)))
    except ValueError:  # a \x02 in a stream or a type (or a time that is not ISO)
        return await _read_records(conn, after, upto)
    return rows


_from_iso = datetime.fromisoformat
_UTC_SUFFIX = "+00:00"


async def fold(
    conn: asyncpg.Connection,
    folded: Folded,
    after: int,
    upto: int,
    on_progress: Progress = lambda n: None,
    *,
    finished: Finished | None = None,
    last_versions: asyncio.Future[list[asyncpg.Record]] | None = None,
) -> set[str]:
    """Fold the events in `(after, upto]` into `folded`; the streams that changed. The next page is read while this
    one is folded (the database and this process work at the same time). With `finished`, each clip's row is handed
    over as soon as its last event is folded, once `last_versions` (the rows of `_LAST_VERSIONS`) has arrived."""
    changed: set[str] = set()
    get, decode, stream_of = folded.get, decode_json, itemgetter(1)
    last: Callable[[str], int | None] | None = None
    read = _read_text if await conn.fetchval(_ISO_DATES) else _read_records
    with _without_gc():
        rows = await read(conn, after, upto)
        while rows:
            following = asyncio.ensure_future(read(conn, rows[-1][0], upto)) if len(rows) == _PAGE else None
            await asyncio.sleep(0)  # the next page's query is sent now, not once this page is folded
            if finished is not None and last is None and last_versions is not None and last_versions.done():
                finished.know(dict(last_versions.result()), folded)  # type: ignore[arg-type]
                last = finished.last.get  # type: ignore[union-attr]
            for position, stream, type_, version, data, at in rows:
                previous = get(stream)
                if previous is None:
                    project_id, clip_id = stream.split("/", 1)  # ids never hold a "/" (API.md)
                    state = ClipState(project_id=project_id, clip_id=clip_id)
                else:
                    state = previous[0]
                state = evolve(state, decode(type_, version, data), at)
                folded[stream] = (state, position)
                if last is not None and state.version == last(stream):
                    finished.add(stream, state, position)  # type: ignore[union-attr]
            changed.update(map(stream_of, rows))
            if finished is not None:
                finished.page_done()
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
    copied_while_folding: int = 0  # rows copied on the second connection while the fold went on


async def rebuild(
    conn: asyncpg.Connection,
    *,
    connect: Callable[[], Awaitable[asyncpg.Connection]] | None = None,
    on_count: Callable[[int], None] = lambda total: None,
    on_progress: Progress = lambda n: None,
    clock: Callable[[], float],
) -> Rebuilt:
    """Recompute `clips` from the log into a new table and swap it in (see the module docstring). With `connect` (a
    second connection of the same database, closed afterwards), each clip's row is copied into the new table on it
    while the fold goes on, as soon as its last event is folded: PostgreSQL writes the rows while this process folds."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK):
        raise Conflict("another rebuild is running")
    other: asyncpg.Connection | None = None
    copying: asyncio.Future[None] | None = None
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
        await conn.execute(f"DROP TABLE IF EXISTS {NEW_TABLE}")
        # The rows first, then the indexes (built once, not row by row), then the planner's statistics (of the
        # columns queries filter or sort on: the others, and above all the json state, would cost more to sample).
        await conn.execute(f"CREATE TABLE {NEW_TABLE} (LIKE clips INCLUDING ALL EXCLUDING INDEXES)")
        finished = Finished()
        last_versions = None
        if connect is not None:
            other = await connect()
            last_versions = asyncio.ensure_future(other.fetch(_LAST_VERSIONS))

            async def copy_finished() -> None:
                await last_versions  # type: ignore[misc]
                await other.copy_to_table(  # type: ignore[union-attr]
                    NEW_TABLE, source=finished.chunks(), columns=list(clip_status.COLUMNS), **store.RAW_TEXT_COPY
                )

            copying = asyncio.ensure_future(copy_finished())
        with _without_gc():
            await fold(conn, folded, 0, upto, count(False), finished=finished, last_versions=last_versions)
            if copying is not None:
                finished.pages.put_nowait(None)
                await copying
            sent = finished.sent
            await clip_status.copy_rows(conn, NEW_TABLE, (row for stream, row in folded.items() if stream not in sent))
        await _copy_indexes(conn, "clips", NEW_TABLE)
        await conn.execute(f"ANALYZE {NEW_TABLE} ({', '.join(clip_status.QUERIED)})")
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
        return Rebuilt(counted[0], len(folded), counted[1], started, clock(), len(finished.sent))
    finally:
        if copying is not None and not copying.done():
            copying.cancel()
            await asyncio.gather(copying, return_exceptions=True)
        if other is not None:
            await other.close()
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
