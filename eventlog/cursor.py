"""Opaque feed cursors that carry the identity of the log they came from.

A cursor is `base64url(epoch[:8] | position | fingerprint)`: the log's epoch (a random id made when the log was
created) and a fingerprint of the event at `position`. A cursor from another database, or from this database
restored to a state where that event is gone or different, is refused (410) instead of silently skipping or
repeating events.

This module is the one place that knows the layout: `encode`/`decode` one cursor, `minter` many of one log (the
feed's hot loop), and `FINGERPRINT_TEXT`, the fingerprint's text as PostgreSQL builds it.
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from datetime import datetime
from typing import Callable
from uuid import UUID

import msgspec

from domain.errors import InvalidInput

_LAYOUT = struct.Struct(">8sQI")

# The text `fingerprint` hashes, `stream:version:<recorded_at.isoformat()>`, built by PostgreSQL (an asyncpg
# timestamptz is a UTC datetime, whose isoformat drops a zero microsecond part): hashing it costs a tenth of
# formatting the datetime in Python. tests/integration/test_feed.py checks that the two agree.
def utc_timestamp_sql(column: str, zone: str) -> str:
    """SQL text of the timestamptz `column` in UTC as Python writes it: seconds, `.` and six digits of microseconds
    unless they are zero, then `zone` (`+00:00` as `isoformat`, `Z` as msgspec's JSON)."""
    return (
        f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') || "
        f"CASE WHEN date_part('microseconds', {column})::bigint % 1000000 = 0 THEN '' "
        f"ELSE to_char({column} AT TIME ZONE 'UTC', '.US') END || '{zone}'"
    )


FINGERPRINT_TEXT = "stream || ':' || version || ':' || " + utc_timestamp_sql("recorded_at", "+00:00")


class Cursor(msgspec.Struct, frozen=True):
    epoch_prefix: bytes
    position: int
    fingerprint: int

    def of_log(self, epoch: UUID) -> bool:
        """Whether the cursor was minted by the log `epoch`."""
        return self.epoch_prefix == epoch.bytes[:8]


def fingerprint(stream: str, version: int, recorded_at: datetime) -> int:
    return zlib.crc32(f"{stream}:{version}:{recorded_at.isoformat()}".encode())


def minter(epoch: UUID) -> Callable[[int, str], str]:
    """`mint(position, fingerprint_text)`: the cursor of the log `epoch` at `position`, from the `FINGERPRINT_TEXT`
    PostgreSQL built for the event there."""
    prefix, pack, b64, crc32 = epoch.bytes[:8], _LAYOUT.pack, base64.urlsafe_b64encode, zlib.crc32

    def mint(position: int, text: str) -> str:  # `encode`, inlined: this runs once per event read
        return b64(pack(prefix, position, crc32(text.encode()))).decode().rstrip("=")

    return mint


def encode(epoch: UUID, position: int, print_: int) -> str:
    return base64.urlsafe_b64encode(_LAYOUT.pack(epoch.bytes[:8], position, print_)).decode().rstrip("=")


def decode(text: str) -> Cursor:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        prefix, position, print_ = _LAYOUT.unpack(raw)
    except (binascii.Error, struct.error, ValueError):
        raise InvalidInput(f"{text!r} is not a cursor from this feed") from None
    if position > 2**63 - 1:
        raise InvalidInput(f"{text!r} is not a cursor from this feed")
    return Cursor(prefix, position, print_)
