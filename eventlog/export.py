"""The export format: JSON lines, a header then one event per line exactly as the log stores it.

    {"format": "cliplog-export", "format_version": 1, "epoch": ..., "schema_versions": {...}, "selection": {...},
     "range": {"after": 0, "upto": 1234, "after_cursor": null, "upto_cursor": "..."}, "count": 56, "owners": {...}}
    {"position": 17, "stream": "p1/c1", "project_id": "p1", "clip_id": "c1", "version": 1,
     "type": "extraction.requested", "schema_version": 1, "data": {...}, "clip_status": "pending",
     "recorded_at": "2026-11-28T12:00:00.123456+00:00"}
    ...

An event line has exactly the fields of `eventlog.store.StoredEvent`, so a reader decodes it into one and replays it
with no database. The range is `(after, upto]` of the log's positions, read in one snapshot up to the safe horizon
(every transaction below it has finished), so an export never misses an event that commits late; `upto_cursor`
continues it (`cliplog export --after <upto_cursor>`). PostgreSQL builds each line (`COPY ... TO STDOUT`, in CSV
with a quote and a delimiter that JSON text never holds raw, so the lines come out as they are): an export runs at
the speed of the database.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Awaitable, Callable, Iterator
from uuid import UUID

import asyncpg
import msgspec

from domain.errors import InvalidInput
from domain.events import SCHEMA_VERSION
from eventlog import cursor, pages, store
from eventlog.store import StoredEvent

FORMAT = "cliplog-export"
FORMAT_VERSION = 1
NDJSON = "application/x-ndjson"  # the media type of an export


class Selection(msgspec.Struct, frozen=True, kw_only=True):
    """What was exported: one clip, one project, or (both None) the whole log."""

    project_id: str | None = None
    clip_id: str | None = None


class Range(msgspec.Struct, frozen=True, kw_only=True):
    after: int
    upto: int
    after_cursor: str | None
    upto_cursor: str | None


class Header(msgspec.Struct, frozen=True, kw_only=True):
    format: str
    format_version: int
    epoch: UUID  # the exporting log's
    exported_at: datetime
    schema_versions: dict[str, int]
    selection: Selection
    range: Range
    count: int
    owners: dict[str, str]  # project id -> the user who owned it in the exporting log




def _where(selection: Selection) -> tuple[str, list[object]]:
    clauses, args = ["position > $1", "position <= $2"], []
    if selection.project_id is not None:
        args.append(selection.project_id)
        clauses.append(f"project_id = ${len(args) + 2}")
    if selection.clip_id is not None:
        args.append(selection.clip_id)
        clauses.append(f"clip_id = ${len(args) + 2}")
    return " AND ".join(clauses), args


Sink = Callable[[bytes], Awaitable[None]]


async def write(
    conn: asyncpg.Connection,
    sink: Sink,
    selection: Selection,
    *,
    after: str | None = None,
    now: datetime,
    on_count: Callable[[int], None] = lambda total: None,
    on_progress: Callable[[int], None] = lambda done: None,
) -> Header:
    """Write the header and the selected events after the cursor `after` to `sink`, in position order, from one
    snapshot. `on_count(total)` once the number of events is known, `on_progress(n)` as each batch of n goes out."""
    if selection.clip_id is not None and selection.project_id is None:
        raise InvalidInput("a clip is named by its project too")
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute("SET LOCAL TIME ZONE 'UTC'")
        located = await pages.locate(conn, cursor.decode(after) if after else None, None)
        upto = await store.head_position(conn)
        if located.position > upto:
            upto = located.position
        where, args = _where(selection)
        params = [located.position, upto, *args]
        count = await conn.fetchval(f"SELECT count(*) FROM events WHERE {where}", *params)
        on_count(count)
        owners_sql = "SELECT project_id, owner FROM projects"
        owners = dict(
            await conn.fetch(owners_sql + " WHERE project_id = $1", selection.project_id)
            if selection.project_id is not None
            else await conn.fetch(owners_sql)
        )
        last = await conn.fetchrow("SELECT stream, version, recorded_at FROM events WHERE position = $1", upto)
        header = Header(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            epoch=located.epoch,
            exported_at=now,
            schema_versions=dict(SCHEMA_VERSION),
            selection=selection,
            range=Range(
                after=located.position,
                upto=upto,
                after_cursor=after,
                upto_cursor=cursor.encode(located.epoch, upto, cursor.fingerprint(*last)) if last else None,
            ),
            count=count,
            owners=owners,
        )
        await sink(msgspec.json.encode(header) + b"\n")

        async def out(chunk: bytes) -> None:
            await sink(chunk)
            on_progress(chunk.count(b"\n"))

        await conn.copy_from_query(
            f"SELECT {store.ROW_JSON} FROM events WHERE {where} ORDER BY position", *params, output=out, **store.RAW_TEXT_COPY
        )
    return header


# An event line with `data` kept as the JSON text it was exported as (an import passes it through): StoredEvent's
# fields, `data` as msgspec.Raw.
RawEvent = msgspec.defstruct(
    "RawEvent",
    [(f.name, msgspec.Raw if f.name == "data" else f.type) for f in msgspec.structs.fields(StoredEvent)],
    frozen=True,
)


_header_decoder = msgspec.json.Decoder(Header)
_event_decoders = {False: msgspec.json.Decoder(StoredEvent), True: msgspec.json.Decoder(RawEvent)}


def read_header(line: bytes, source: str = "the file") -> Header:
    try:
        header = _header_decoder.decode(line)
    except msgspec.DecodeError:
        raise InvalidInput(f"{source} is not a cliplog export: its first line is no export header") from None
    if header.format != FORMAT:
        raise InvalidInput(f"{source} is not a cliplog export (format {header.format!r})")
    if header.format_version > FORMAT_VERSION:
        raise InvalidInput(f"{source} was written by a newer cliplog (format version {header.format_version})")
    newer = {t: v for t, v in header.schema_versions.items() if v > SCHEMA_VERSION.get(t, 0)}
    if newer:
        raise InvalidInput(f"{source} holds events this cliplog cannot read: {newer} (upgrade cliplog)")
    return header


def event_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """`(line number, line)` of every event line (the header and blank lines left out)."""
    with path.open("rb") as lines:
        lines.readline()
        for number, line in enumerate(lines, start=2):
            if line.strip():
                yield number, line


def read(path: Path, *, raw_data: bool = False) -> tuple[Header, Iterator[StoredEvent]]:
    """The header, and the events one by one (a bad line raises InvalidInput naming it); with `raw_data`,
    `RawEvent`s. The file is opened again when the events are first read."""
    try:
        with path.open("rb") as lines:
            first = lines.readline()
    except OSError as error:
        raise InvalidInput(f"cannot read {path}: {error.strerror}") from None
    if not first:
        raise InvalidInput(f"{path} is empty: not a cliplog export")
    header = read_header(first, str(path))
    decode = _event_decoders[raw_data].decode

    def events() -> Iterator[StoredEvent]:
        for number, line in event_lines(path):
            try:
                yield decode(line)
            except msgspec.DecodeError as error:
                raise InvalidInput(f"{path}, line {number}: not an exported event ({error})") from None

    return header, events()
