"""Pages of the log as the feed reads them: events with their cursors, and where a cursor stands in this log.

`read_page` reads the events of one user's projects (or of one project) after a position, in position order.
Ownership is joined in the same statement as the events, so a project claimed in the same transaction as its first
event is seen together with that event (reading the project list first could skip it for good). Without `upto`
the page stops at the safe horizon (see `eventlog.store`); with `upto` it reads `(after, upto]`, a range the
broker has already passed, where every transaction has finished and nothing can appear any more.
"""

from __future__ import annotations

from datetime import datetime
from typing import Sequence
from uuid import UUID

import asyncpg
import msgspec

from domain.errors import CursorFromAnotherLog, Unavailable
from eventlog import cursor, feed_json, store

_SAFE = store._SAFE  # noqa: SLF001 - the store's safe horizon
_COLUMNS = (
    f"position, type, project_id, clip_id, version, recorded_at, clip_status, data::text, {feed_json.STORED_PRINT}, "
    "schema_version"
)


class EventView(msgspec.Struct, frozen=True):
    """An event as every reader gets it (the pages of `GET /api/events`, a clip's history, the WebSocket feed): the
    one schema `/schema` publishes. `data` is the JSON text PostgreSQL holds: read once, never decoded and
    re-encoded. Its fields after `cursor` are `eventlog.feed_json.FIELDS_AFTER_CURSOR`, which the appends write."""

    position: int
    cursor: str
    type: str
    project_id: str
    clip_id: str
    version: int
    recorded_at: datetime
    clip_status: str
    data: msgspec.Raw
    # An addition to API.md: the version of `data`'s schema for its type (domain.events.SCHEMA_VERSION when it was
    # written), so that an event read from the feed is the stored event whole (`cliplog export --url`).
    schema_version: int

    @property
    def fingerprint(self) -> int:
        return cursor.decode(self.cursor).fingerprint


def _events(rows: Sequence[asyncpg.Record], epoch: UUID) -> list[EventView]:
    """Rows of `_COLUMNS` as events with their cursors (this is the hot loop)."""
    mint, raw = cursor.minter(epoch), msgspec.Raw
    return [EventView(r[0], mint(r[0], r[8]), r[1], r[2], r[3], r[4], r[5], r[6], raw(r[7]), r[9]) for r in rows]


_OWNED = "project_id IN (SELECT project_id FROM projects WHERE owner = $3)"


def _page_sql(columns: str) -> dict[tuple[bool, bool], str]:
    """The page reads selecting `columns`, by (one project?, up to a final position?). `$NEXT` in `columns` is the
    parameter after the page's own."""
    after = "position > $1 AND " + "{} AND {}"
    return {
        (filtered, bounded): f"SELECT {columns.replace('$NEXT', '$5' if bounded else '$4')} FROM events WHERE "
        + after.format("position <= $4" if bounded else _SAFE, "project_id = $3" if filtered else _OWNED)
        + " ORDER BY position LIMIT $2"
        for filtered in (False, True)
        for bounded in (False, True)
    }


_PAGE_SQL = _page_sql(_COLUMNS)
_STREAM_SQL = f"SELECT {_COLUMNS} FROM events WHERE stream = $1 ORDER BY version"
_ALL_SQL = f"SELECT {_COLUMNS} FROM events WHERE position > $1 AND {_SAFE} ORDER BY position LIMIT $2"


async def read_page(
    db: asyncpg.Connection | asyncpg.Pool,
    epoch: UUID,
    after: int,
    limit: int,
    *,
    user: str,
    project_id: str | None = None,
    upto: int | None = None,
) -> list[EventView]:
    """`user`'s events (or `project_id`'s, whose ownership the caller checked) after `after`, in position order,
    with cursors of the log `epoch`."""
    return _events(await db.fetch(*_page_query(_PAGE_SQL, after, limit, user, project_id, upto)), epoch)


def _page_query(
    sql: dict[tuple[bool, bool], str], after: int, limit: int, user: str, project_id: str | None, upto: int | None
) -> list[object]:
    args: list[object] = [sql[(project_id is not None, upto is not None)], after, limit]
    args.append(project_id if project_id is not None else user)
    if upto is not None:
        args.append(upto)
    return args


# An event's JSON exactly as msgspec encodes its `EventView`: the rows hold the position, the JSON after the cursor
# (`feed_tail`) and the cursor's fingerprint (`feed_fingerprint`), all written with the event (`eventlog.feed_json`,
# migrations/018 and 019). PostgreSQL builds each cursor from the fingerprint (`eventlog.cursor.sql`: the cursor's
# layout stays in `eventlog.cursor`) and each event's whole JSON, as UTF-8 bytes; Python only joins them. A row
# without the stored fingerprint (written before 019, by a path that does not store it, or changed in place since)
# comes with the fingerprint's text and the JSON after the cursor instead (`feed_print` and `feed_tail`, or the same
# text built now), and Python mints its cursor, as for every row before 019.
assert EventView.__struct_fields__ == ("position", "cursor", *feed_json.FIELDS_AFTER_CURSOR)


def _built_columns() -> str:
    """`(position, stored fingerprint, the event's JSON as UTF-8 bytes, the fingerprint's text, the JSON after the
    cursor)`: the JSON when the fingerprint is stored, else the two texts Python mints it from (and NULL). The
    epoch's prefix (`eventlog.cursor.epoch_prefix`) is the parameter after the page's own."""
    mint = cursor.sql("$NEXT::bytea", "position", "feed_fingerprint")
    line = (f"""CASE WHEN feed_fingerprint IS NOT NULL THEN textsend('{{"position":' || position || ',"cursor":"' """
            f"""|| {mint} || '"' || {feed_json.STORED_TAIL}) END""")  # NULL either way without it: not built twice
    unminted = "CASE WHEN feed_fingerprint IS NULL THEN {} END"
    return f"position, feed_fingerprint, {line}, " + ", ".join(
        unminted.format(text) for text in (feed_json.STORED_PRINT, feed_json.STORED_TAIL)
    )


_JSON_PAGE_SQL = _page_sql(_built_columns())


class JsonEvents(msgspec.Struct):
    """Events as JSON text, each exactly what msgspec writes for its `EventView`, in position order, joined by
    `separator` in `body` (UTF-8)."""

    body: bytes
    count: int
    last_position: int | None  # None when there are no events
    last_cursor: str | None
    separator: bytes

    def __add__(self, more: JsonEvents) -> JsonEvents:
        if not more.count:
            return self
        if not self.count:
            return more
        body = self.body + self.separator + more.body
        return JsonEvents(body, self.count + more.count, more.last_position, more.last_cursor, self.separator)


def _built_events(rows: Sequence[asyncpg.Record], epoch: UUID, separator: bytes) -> JsonEvents:
    """Rows of `_JSON_PAGE_SQL` as JSON text (this is the hot loop: one list of the events' bytes)."""
    if not rows:
        return JsonEvents(b"", 0, None, None, separator)
    mint = cursor.minter(epoch)
    lines = [r[2] for r in rows]
    if None in lines:  # rows without the stored fingerprint: their cursors minted here
        for i, (p, _, line, text, rest) in enumerate(rows):
            if line is None:
                lines[i] = f'{{"position":{p},"cursor":"{mint(p, text)}"{rest}'.encode()
    p, stored, _, text, _ = rows[-1]
    last = cursor.encode(epoch, p, stored % (1 << 32)) if stored is not None else mint(p, text)
    return JsonEvents(separator.join(lines), len(rows), p, last, separator)


async def read_page_json(
    db: asyncpg.Connection | asyncpg.Pool,
    epoch: UUID,
    after: int,
    limit: int,
    *,
    user: str,
    project_id: str | None = None,
    upto: int | None = None,
    separator: bytes = b"\n",
) -> JsonEvents:
    """`read_page`'s events as their JSON text joined by `separator` (what `GET /api/events` sends: `,` in a page,
    a newline in the NDJSON stream)."""
    query = _page_query(_JSON_PAGE_SQL, after, limit, user, project_id, upto)
    return _built_events(await db.fetch(*query, cursor.epoch_prefix(epoch)), epoch, separator)


async def read_stream(
    db: asyncpg.Connection | asyncpg.Pool, epoch: UUID, project_id: str, clip_id: str
) -> list[EventView]:
    """A clip's whole history, oldest first."""
    return _events(await db.fetch(_STREAM_SQL, store.stream_name(project_id, clip_id)), epoch)


async def read_all(db: asyncpg.Connection | asyncpg.Pool, epoch: UUID, after: int, limit: int) -> list[EventView]:
    """Every event after `after` up to the safe horizon (what the broker follows)."""
    return _events(await db.fetch(_ALL_SQL, after, limit), epoch)


async def head(db: asyncpg.Connection | asyncpg.Pool) -> tuple[int, int]:
    """`(position, fingerprint)` of the last event below the safe horizon; `(0, 0)` for an empty log."""
    row = await db.fetchrow(
        f"SELECT position, stream, version, recorded_at FROM events WHERE {_SAFE} ORDER BY position DESC LIMIT 1"
    )
    if row is None:
        return 0, 0
    return row["position"], cursor.fingerprint(row["stream"], row["version"], row["recorded_at"])


class Located(msgspec.Struct, frozen=True):
    epoch: UUID
    position: int  # the cursor's position, checked against this log
    final: int | None  # a position up to which every transaction has finished (None: unknown)


async def locate(
    db: asyncpg.Connection | asyncpg.Pool, after: cursor.Cursor | None, known: tuple[UUID, int, int] | None
) -> Located:
    """The log's epoch, and `after` checked against it (CursorFromAnotherLog
    otherwise), in one query; with
    `known` = `(epoch, position, fingerprint)` of a position the broker passed, also whether that still holds (then
    everything up to it is final and can be read without the safe horizon)."""
    position = after.position if after is not None else 0
    known_position = known[1] if known is not None else 0
    row = await db.fetchrow(
        "SELECT l.epoch, c.stream AS c_stream, c.version AS c_version, c.recorded_at AS c_at, "
        "k.stream AS k_stream, k.version AS k_version, k.recorded_at AS k_at FROM log_identity l "
        "LEFT JOIN events c ON c.position = $1 LEFT JOIN events k ON k.position = $2",
        position,
        known_position,
    )
    if row is None:
        raise Unavailable("the event log has no identity yet: run `cliplog migrate`")
    epoch: UUID = row["epoch"]
    if after is not None:
        if not after.of_log(epoch):
            raise CursorFromAnotherLog(
                "this cursor comes from another event log (the database was reset or replaced)"
            )
        if after.position and (
            row["c_stream"] is None
            or cursor.fingerprint(row["c_stream"], row["c_version"], row["c_at"]) != after.fingerprint
        ):
            raise CursorFromAnotherLog(
                "this cursor points at an event this log does not hold (the database was restored or reset)"
            )
    final = None
    if known is not None and known[0] == epoch:
        if known_position == 0 or (
            row["k_stream"] is not None
            and cursor.fingerprint(row["k_stream"], row["k_version"], row["k_at"]) == known[2]
        ):
            final = known_position
    return Located(epoch, position, final)


# Rows written before migration 019 (or by a path that does not store it) have no stored fingerprint, and every read
# of them builds their JSON and mints their cursor in Python (before 018 their texts are built by PostgreSQL too).
# `backfill_feed` stores them, as the appends would have: Python computes each fingerprint from the text PostgreSQL
# builds for the row now, and the UPDATE writes it only where the row still has that text (a row changed in place
# meanwhile is left for the next run). Only the stored columns change, so 018's trigger keeps what it writes.
_MISSING_SQL = (
    f"SELECT position, {feed_json.STORED_PRINT} FROM events WHERE feed_fingerprint IS NULL AND position > $1 "
    "ORDER BY position LIMIT $2"
)
_FILL_SQL = f"""
UPDATE events SET feed_fingerprint = v.fingerprint, feed_print = v.print, feed_tail = {feed_json.STORED_TAIL}
FROM unnest($1::bigint[], $2::integer[], $3::text[]) AS v(position, fingerprint, print)
WHERE events.position = v.position AND events.feed_fingerprint IS NULL AND {feed_json.STORED_PRINT} = v.print
"""


async def backfill_feed(conn: asyncpg.Connection, batch: int = 5000) -> int:
    """Store the feed's fingerprint (and texts) of every row without it, `batch` rows per transaction; the number of
    rows filled. Safe beside appends and reads (each batch locks only its rows)."""
    filled, after = 0, 0
    while rows := await conn.fetch(_MISSING_SQL, after, batch):
        prints = [text for _, text in rows]
        stored = [cursor.stored_of_text(text) for text in prints]
        status = await conn.execute(_FILL_SQL, [p for p, _ in rows], stored, prints)
        filled += int(status.split()[-1])
        after = rows[-1][0]
    return filled
