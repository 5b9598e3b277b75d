"""Opaque feed cursors that carry the identity of the log they came from.

A cursor is `base64url(epoch[:8] | position | fingerprint)`: the log's epoch (a random id made when the log was
created) and a fingerprint of the event at `position`. A cursor from another database, or from this database
restored to a state where that event is gone or different, is refused (410) instead of silently skipping or
repeating events.
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec

from domain.errors import CursorFromAnotherLog, InvalidInput

_LAYOUT = struct.Struct(">8sQI")


class Cursor(msgspec.Struct, frozen=True):
    epoch_prefix: bytes
    position: int
    fingerprint: int


def fingerprint(stream: str, version: int, recorded_at: datetime) -> int:
    return zlib.crc32(f"{stream}:{version}:{recorded_at.isoformat()}".encode())


def encode(epoch: UUID, position: int, print_: int) -> str:
    raw = _LAYOUT.pack(epoch.bytes[:8], position, print_)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(text: str) -> Cursor:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        prefix, position, print_ = _LAYOUT.unpack(raw)
    except (binascii.Error, struct.error, ValueError):
        raise InvalidInput(f"{text!r} is not a cursor from this feed") from None
    if position > 2**63 - 1:
        raise InvalidInput(f"{text!r} is not a cursor from this feed")
    return Cursor(prefix, position, print_)


async def check(conn: asyncpg.Connection | asyncpg.Pool, epoch: UUID, cursor: Cursor) -> int:
    """The cursor's position, if it belongs to this log as it is now; else CursorFromAnotherLog."""
    if cursor.epoch_prefix != epoch.bytes[:8]:
        raise CursorFromAnotherLog("this cursor comes from another event log (the database was reset or replaced)")
    if cursor.position == 0:
        return 0
    row = await conn.fetchrow(
        "SELECT stream, version, recorded_at FROM events WHERE position = $1", cursor.position
    )
    if row is None or fingerprint(row["stream"], row["version"], row["recorded_at"]) != cursor.fingerprint:
        raise CursorFromAnotherLog(
            "this cursor points at an event this log does not hold (the database was restored or reset)"
        )
    return cursor.position
