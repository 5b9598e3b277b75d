"""The append-only event log on asyncpg.

Appending: `cliplog_allocate_positions` (migrations/001, 005, 021) is the first write of every appending transaction. It
takes the transaction id and the event positions together under a lock held for microseconds, so positions
follow transaction-id order, and the lock is not held through commit (which would serialise every fsync, as a
table lock does); it also takes a shared advisory lock held until the transaction ends, which marks it as an
appender for the readers' horizon (shared: appenders do not wait for each other). `(stream, version)` is unique: an append at a stale expected version fails and writes nothing.

Reading in position order: a transaction that allocated a low position may commit after one holding a higher
position. Readers therefore read only rows whose transaction id is below the oldest appending transaction still
running in their snapshot (`cliplog_safe_horizon`, migrations/005 and 017: like `pg_snapshot_xmin`, but blind to
transactions that do not append events, such as an operator's open `BEGIN; UPDATE ...` or a transaction of another
database): every appender below it has finished, and every appender still running or yet to come holds positions
above every row read. A reader that follows the log by position never skips a late commit and never sees a row
twice. A transaction is told to be an appender by one read of pg_locks: its lock on its own id and the appenders'
lock held by the same backend (pid; pg_locks' virtual transaction id is not stable while a backend commits, which
once let a committing appender look like a non-appender and a reader skip its rows: migrations/017).
`python -m bench.horizon_stress` follows the log under load and counts skips.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, Sequence
from uuid import UUID

import asyncpg
import msgspec

from domain.errors import VersionConflict
from domain.events import SCHEMA_VERSION, ExtractionEvent, decode, encode_data, type_of
from eventlog import cursor, feed_json


# What a lost or restarting PostgreSQL looks like from asyncpg. A connection broken in the middle of a statement can
# come back from the pool in a half-done protocol state ("cannot switch to state ..."): the same outage, seen one
# query later.
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.InternalClientError,
)


class StoredEvent(msgspec.Struct, frozen=True):
    """One row of the log. Field order is the column order of `_COLUMNS` (rows are unpacked positionally)."""

    position: int
    stream: str
    project_id: str
    clip_id: str
    version: int
    type: str
    schema_version: int
    data: dict[str, Any]
    clip_status: str
    recorded_at: datetime

    def decoded(self) -> ExtractionEvent:
        return decode(self.type, self.schema_version, self.data)


def stream_name(project_id: str, clip_id: str) -> str:
    return f"{project_id}/{clip_id}"


_COLUMNS = "position, stream, project_id, clip_id, version, type, schema_version, data, clip_status, recorded_at"

# The columns of an event an append writes (`insert_sql` adds the feed's JSON)
INSERTED = "position, txid, stream, project_id, clip_id, version, type, schema_version, data, clip_status, recorded_at"


def insert_sql(rows: str, returning: str = "", *, fingerprint: str = "NULL") -> str:
    """An INSERT into `events` of `rows` (a query selecting the columns of `INSERTED` by those names, as `e`), with
    each event's feed JSON (`eventlog.feed_json`), which every append writes, and its cursor fingerprint
    `fingerprint` (an SQL expression, e.g. over `e`, of `eventlog.cursor.stored_fingerprint`'s value; NULL: the
    feed mints the event's cursors in Python, migrations/019)."""
    return (
        f"INSERT INTO events ({INSERTED}, feed_print, feed_tail, feed_fingerprint) "
        f"SELECT {INSERTED}, {feed_json.ROW_PRINT}, {feed_json.ROW_TAIL}, ({fingerprint})::integer "
        f"FROM ({rows}) AS e {returning}"
    )


_APPEND_ONE = insert_sql(
    "SELECT allocated.first_position AS position, allocated.txid, $1::text AS stream, $2::text AS project_id, "
    "$3::text AS clip_id, $5::integer + 1 AS version, $4::text AS type, $7::smallint AS schema_version, "
    "$8::jsonb AS data, $9::text AS clip_status, $6::timestamptz AS recorded_at "
    "FROM cliplog_allocate_positions(1) AS allocated",
    "RETURNING position",
    fingerprint="$10::integer",
)

_APPEND_MANY = "WITH allocated AS (SELECT * FROM cliplog_allocate_positions(cardinality($4::text[]))) " + insert_sql(
    "SELECT allocated.first_position + e.i - 1 AS position, allocated.txid, $1::text AS stream, "
    "$2::text AS project_id, $3::text AS clip_id, $5::integer + e.i::integer AS version, e.type, e.schema_version, "
    "e.data, e.clip_status, $6::timestamptz AS recorded_at, e.fingerprint "
    "FROM allocated, unnest($4::text[], $7::smallint[], $8::jsonb[], $9::text[], $10::integer[]) WITH ORDINALITY "
    "AS e(type, schema_version, data, clip_status, fingerprint, i)",
    "RETURNING position",
    fingerprint="e.fingerprint",
)

_SAFE = "txid < (SELECT cliplog_safe_horizon())"

# COPY options that move text as it is, both ways: CSV with a quote and a delimiter that the values never hold raw
# (ids are [A-Za-z0-9_-], JSON text escapes every control character), so nothing is quoted or escaped. An empty
# field is NULL. Bulk writers (import, rebuild) and the export use it.
RAW_TEXT_COPY: dict[str, str] = {"format": "csv", "quote": "\x01", "delimiter": "\x02"}
RAW_TEXT_DELIMITER = b"\x02"


async def copy_lines(conn: asyncpg.Connection, table: str, columns: Sequence[str], lines: Iterable[bytes]) -> None:
    """COPY `lines` (fields joined by RAW_TEXT_DELIMITER, each ending in a newline) into `table`, in ~1 MB chunks."""

    async def chunks() -> AsyncIterator[bytes]:
        batch: list[bytes] = []
        size = 0
        for line in lines:
            batch.append(line)
            size += len(line)
            if size >= 1 << 20:
                yield b"".join(batch)
                batch, size = [], 0
        if batch:
            yield b"".join(batch)

    await conn.copy_to_table(table, source=chunks(), columns=list(columns), **RAW_TEXT_COPY)


# An event row as one JSON object with StoredEvent's fields (an export's line), built by PostgreSQL.
ROW_JSON = "json_build_object(" + ", ".join(f"'{f}', {f}" for f in StoredEvent.__struct_fields__) + ")::text"


async def append_rows(
    conn: asyncpg.Connection, count: int, lines: Iterable[bytes], *, project_id: str | None = None
) -> int:
    """Append `count` events given as ROW_JSON lines (of any streams, in log order) at consecutive new positions of
    this log, in one statement: the bulk form of `append` (an import's), with the same position allocation as the
    transaction's first write. Each line's position is left behind; `project_id` replaces each event's project.
    PostgreSQL reads the lines (COPY into a temporary table, then one INSERT ... SELECT; before it, the streams,
    versions and times as it read them come back for Python to compute the cursor fingerprints). Returns the first
    position. A stream that already holds one of the versions raises VersionConflict (the transaction must roll
    back)."""
    if not conn.is_in_transaction():
        raise RuntimeError("append_rows must run inside a transaction")
    with _conflicts_raised(conn, "(an appended stream)", 0):
        txid, first = await conn.fetchrow("SELECT txid::text, first_position FROM cliplog_allocate_positions($1)", count)
    table = "cliplog_staged_rows"
    await conn.execute(f"CREATE TEMPORARY TABLE {table} (ord bigint, line json) ON COMMIT DROP")
    numbered = (b"%d%s%s" % (i, RAW_TEXT_DELIMITER, line if line.endswith(b"\n") else line + b"\n")
                for i, line in enumerate(lines))  # fmt: skip
    await copy_lines(conn, table, ("ord", "line"), numbered)
    project = "coalesce($3, r.project_id)"
    staged = (
        f"SELECT $1 + ord AS position, $2::text::xid8 AS txid, {project} || '/' || r.clip_id AS stream, "
        f"{project} AS project_id, r.clip_id, r.version, r.type, r.schema_version, r.data, r.clip_status, "
        f"r.recorded_at, ord FROM {table}, json_to_record(line) AS r(project_id text, clip_id text, "
        "version integer, type text, schema_version smallint, data jsonb, clip_status text, recorded_at timestamptz)"
    )
    # The cursor fingerprints, computed here from the values as PostgreSQL read them (PostgreSQL has no CRC-32),
    # read through a cursor: an import of a million events holds their fingerprints, not a million Records
    fingerprints = conn.cursor(
        f"SELECT stream, version, recorded_at FROM ({staged}) AS e ORDER BY ord", first, txid, project_id,
        prefetch=10_000,
    )  # fmt: skip
    prints = [cursor.stored_fingerprint(stream, version, at) async for stream, version, at in fingerprints]
    try:
        await conn.execute(
            insert_sql(staged, fingerprint="($4::integer[])[e.ord + 1]"), first, txid, project_id, prints
        )
    except asyncpg.UniqueViolationError as error:
        if error.constraint_name == "events_stream_version":
            raise VersionConflict("(an appended stream)", 0) from None
        raise
    return first


def _stored(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(*row)


def _append_args(
    project_id: str, clip_id: str, expected_version: int, events: Sequence[tuple[ExtractionEvent, str]],
    recorded_at: datetime,
) -> tuple[tuple, list[str], list[int], list[dict], list[str]]:  # fmt: skip
    """The parameters $1-$10 of `_APPEND_ONE` (one event) or `_APPEND_MANY`, and the events' columns."""
    stream = stream_name(project_id, clip_id)
    types = [type_of(e) for e, _ in events]
    versions = [SCHEMA_VERSION[t] for t in types]
    data = [encode_data(e) for e, _ in events]
    statuses = [status for _, status in events]
    prints = [cursor.stored_fingerprint(stream, expected_version + i + 1, recorded_at) for i in range(len(events))]
    if len(events) == 1:
        args: tuple = (types[0], expected_version, recorded_at, versions[0], data[0], statuses[0], prints[0])
    else:
        args = (types, expected_version, recorded_at, versions, data, statuses, prints)
    return (stream, project_id, clip_id, *args), types, versions, data, statuses


def _appended(
    positions: Sequence[int], project_id: str, clip_id: str, expected_version: int, types: list[str],
    versions: list[int], data: list[dict], statuses: list[str], recorded_at: datetime,
) -> list[StoredEvent]:  # fmt: skip
    stream = stream_name(project_id, clip_id)
    return [
        StoredEvent(position, stream, project_id, clip_id, expected_version + i + 1, types[i], versions[i], data[i],
                    statuses[i], recorded_at)
        for i, position in enumerate(positions)
    ]


@contextlib.contextmanager
def _conflicts_raised(conn: asyncpg.Connection, stream: str, expected_version: int) -> Iterator[None]:
    """An append's refusals as VersionConflict: the stream already holds the version, or (`append_with`) a write
    that goes with the events found its row moved on (`STALE_WRITE`). Whatever it raises (a cancel too) marks a
    pooled connection (`LogConnection`), so that its release frees the session locks it may hold."""
    try:
        yield
    except BaseException as error:
        interrupted = getattr(conn, "append_interrupted", None)  # a pool's proxy passes it to its LogConnection
        if interrupted is not None:
            interrupted()
        if isinstance(error, asyncpg.UniqueViolationError) and error.constraint_name == "events_stream_version":
            raise VersionConflict(stream, expected_version) from None
        if isinstance(error, asyncpg.PostgresError) and error.sqlstate == STALE_WRITE:
            raise VersionConflict(stream, expected_version) from None
        raise


async def append(
    conn: asyncpg.Connection,
    *,
    project_id: str,
    clip_id: str,
    expected_version: int,
    events: Sequence[tuple[ExtractionEvent, str]],
    recorded_at: datetime,
) -> list[StoredEvent]:
    """Append `(event, clip status after it)` pairs to a clip's stream. Must be the transaction's first write.

    Raises VersionConflict, having written nothing, when the stream is no longer at `expected_version`.
    """
    if not conn.is_in_transaction():
        raise RuntimeError("append must run inside a transaction")
    args, types, versions, data, statuses = _append_args(project_id, clip_id, expected_version, events, recorded_at)
    with _conflicts_raised(conn, args[0], expected_version):
        if len(events) == 1:
            positions = [await conn.fetchval(_APPEND_ONE, *args)]
        else:
            positions = sorted(r[0] for r in await conn.fetch(_APPEND_MANY, *args))
    return _appended(positions, project_id, clip_id, expected_version, types, versions, data, statuses, recorded_at)


# A write that must land with the events or not at all refuses with this SQLSTATE (`cliplog_require`, migration
# 021): the statement, and its transaction, fail; `append_with` raises VersionConflict.
STALE_WRITE = "CL409"
FIRST_WRITE_PARAMETER = 11  # the appends' own are $1-$10 (`_append_args`)


def append_with_sql(many: bool, writes: str, checks: Sequence[str]) -> str:
    """One statement that appends (parameters $1-$10, as `_APPEND_ONE` / `_APPEND_MANY`) and then makes `writes`:
    further CTEs (`name AS (...)`, separated by commas) that may read `appended` (the events' `position`s) and use
    parameters from `$FIRST_WRITE_PARAMETER` on. Each of `checks` names a CTE that must return a row, else the whole
    statement fails (nothing appended, nothing written). It selects the positions, in order."""
    append = _APPEND_MANY if many else _APPEND_ONE
    required = ", ".join(f"cliplog_require(EXISTS (SELECT FROM {name}), '{name}')" for name in checks)
    return (
        f"WITH appended AS ({append}), {writes} "
        f"SELECT (SELECT array_agg(position ORDER BY position) FROM appended) AS positions"
        + (f", {required}" if required else "")
    )


async def append_with(
    conn: asyncpg.Connection,
    sql: Callable[[bool], str],
    write_args: Sequence[Any],
    *,
    project_id: str,
    clip_id: str,
    expected_version: int,
    events: Sequence[tuple[ExtractionEvent, str]],
    recorded_at: datetime,
) -> list[StoredEvent]:
    """`append` and the writes that go with it in one statement, `sql(many)` (`append_with_sql`), with `write_args`
    as its parameters from `$FIRST_WRITE_PARAMETER` on: one round trip, and no BEGIN and COMMIT of its own outside a
    transaction (the statement is one). Raises VersionConflict, having written nothing, when the stream is no longer at
    `expected_version` or one of the statement's checks failed."""
    args, types, versions, data, statuses = _append_args(project_id, clip_id, expected_version, events, recorded_at)
    with _conflicts_raised(conn, args[0], expected_version):
        row = await conn.fetchrow(sql(len(events) > 1), *args, *write_args)
    positions = row["positions"]
    return _appended(positions, project_id, clip_id, expected_version, types, versions, data, statuses, recorded_at)


async def read_stream(conn: asyncpg.Connection | asyncpg.Pool, project_id: str, clip_id: str) -> list[StoredEvent]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM events WHERE stream = $1 ORDER BY version", stream_name(project_id, clip_id)
    )
    return [_stored(r) for r in rows]


async def read_after(
    conn: asyncpg.Connection | asyncpg.Pool,
    position: int,
    limit: int = 100,
    project_ids: Sequence[str] | None = None,
) -> list[StoredEvent]:
    """Events after `position`, in position order, up to the safe horizon (see the module docstring)."""
    if project_ids is None:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE position > $1 AND {_SAFE} ORDER BY position LIMIT $2",
            position,
            limit,
        )
    else:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE position > $1 AND project_id = ANY($3::text[]) AND {_SAFE} "
            "ORDER BY position LIMIT $2",
            position,
            limit,
            list(project_ids),
        )
    return [_stored(r) for r in rows]


async def head_position(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """The highest position a reader may safely pass (0 for an empty log)."""
    value = await conn.fetchval(f"SELECT max(position) FROM events WHERE {_SAFE}")
    return value or 0


class HorizonHolder(msgspec.Struct, frozen=True):
    """The backend whose open appending transaction holds the readers back."""

    pid: int
    application_name: str
    xact_age: float  # seconds since its transaction began


class HorizonStatus(msgspec.Struct, frozen=True):
    lag_seconds: float  # age of the oldest committed event that readers cannot read yet (0: none waits)
    held_by: HorizonHolder | None  # set while an event waits and the transaction holding it back still runs


_HORIZON_STATUS = """
WITH horizon AS MATERIALIZED (SELECT cliplog_safe_horizon() AS x),
-- from the head backwards (the primary key): it stops at the first finished row, so its cost is the events appended
-- since the horizon was held, not the length of the log (max(position) ... WHERE txid < x, and a join with
-- safe_head instead of a scalar bound, scanned the whole table)
safe_head AS MATERIALIZED (
    SELECT coalesce((SELECT position FROM events, horizon WHERE txid < horizon.x ORDER BY position DESC LIMIT 1), 0) AS p
),
waiting AS (
    SELECT recorded_at FROM events WHERE position > (SELECT p FROM safe_head) ORDER BY position LIMIT 1  -- an index bound
)
SELECT greatest(0, extract(epoch FROM clock_timestamp() - waiting.recorded_at))::float8 AS lag_seconds,
       holder.pid, holder.application_name,
       extract(epoch FROM clock_timestamp() - holder.xact_start)::float8 AS xact_age
FROM horizon
LEFT JOIN waiting ON true
LEFT JOIN pg_stat_activity holder ON waiting.recorded_at IS NOT NULL AND holder.backend_xid = xid(horizon.x)
"""


async def horizon_status(conn: asyncpg.Connection | asyncpg.Pool) -> HorizonStatus:
    """How far the readers' safe horizon lags behind the committed log, and which backend holds it back."""
    row = await conn.fetchrow(_HORIZON_STATUS)
    holder = None
    if row["pid"] is not None:
        holder = HorizonHolder(pid=row["pid"], application_name=row["application_name"] or "",
                               xact_age=round(row["xact_age"] or 0.0, 3))
    return HorizonStatus(lag_seconds=round(row["lag_seconds"] or 0.0, 3), held_by=holder)


async def epoch(conn: asyncpg.Connection | asyncpg.Pool) -> UUID:
    return await conn.fetchval("SELECT epoch FROM log_identity")


NOTIFY_CHANNEL = "cliplog_events"


async def notify(conn: asyncpg.Connection, position: int) -> None:
    """Wake the log's followers (a hint only: they always re-read by position, and also poll now and then).

    Sent after commit, in its own statement: a NOTIFY inside the appending transaction would take PostgreSQL's
    global notify lock across the commit and serialise every appender's fsync.
    """
    try:
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(position))
    except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
        pass  # the events are committed; followers will find them on their next poll


class LogConnection(asyncpg.Connection):
    """The pools' connections (`POOL_OPTIONS`): an append that did not end well (an error, a cancel) marks its
    connection, and the release frees the session advisory locks it may still hold (`reset_connection`)."""

    __slots__ = ("_append_interrupted",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._append_interrupted = False

    def append_interrupted(self) -> None:
        self._append_interrupted = True


async def reset_connection(conn: asyncpg.Connection) -> None:
    """A pooled connection's reset on release: beyond what asyncpg always does first (roll back a transaction left
    open, drop the Python-side listeners), nothing, unless an append on it was interrupted. asyncpg's default sends
    `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` on every release: a round trip and four
    statements for PostgreSQL, about a tenth of the API's time and a good share of the worker's (bench/README.md,
    "Fewer round trips"). cliplog keeps no session state on pooled connections: session advisory locks, LISTEN and
    session settings live on connections of their own (the leaders', the feed's listener, the commands'), what a
    pooled connection sets is transaction-local (`SET LOCAL`, `set_config(..., true)`), cursors live in transactions.
    The one session lock a pooled connection takes is the position allocator's, for microseconds, released by the
    allocator's own handler on any error or cancel (migrations/021); should a second interrupt land in that handler,
    the append raised, marked the connection (`LogConnection`), and this frees the lock."""
    if getattr(conn, "_append_interrupted", False):
        conn._append_interrupted = False  # type: ignore[attr-defined]
        await conn.execute("SELECT pg_advisory_unlock_all()")


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection set-up: jsonb and json (the clip-status projection's state) as Python objects through
    msgspec. (Every other json value a query returns is cast to text.)"""
    for name in ("jsonb", "json"):
        await conn.set_type_codec(
            name,
            encoder=lambda value: msgspec.json.encode(value).decode(),
            decoder=msgspec.json.decode,
            schema="pg_catalog",
        )


# How every pool of the log's connections is made (runtime.bootstrap's, the tests' and the benches')
POOL_OPTIONS: dict[str, Any] = {"init": init_connection, "reset": reset_connection, "connection_class": LogConnection}
