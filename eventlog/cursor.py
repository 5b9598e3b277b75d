"""Opaque feed cursors that carry the identity of the log they came from.

A cursor is `base64url(epoch[:8] | position | fingerprint)`: the log's epoch (a random id made when the log was
created) and a fingerprint of the event at `position`. A cursor from another database, or from this database
restored to a state where that event is gone or different, is refused (410) instead of silently skipping or
repeating events.

This module is the one place that knows the layout: `encode`/`decode` one cursor, `minter` many of one log from
the fingerprint's text PostgreSQL writes with each event (`eventlog.feed_json`: hashing it costs a tenth of
formatting the datetime in Python), and `sql`, the same cursor built by PostgreSQL from the fingerprint the appends
store with each event (`stored_fingerprint`; PostgreSQL 15 has no CRC-32, so Python computes it when it appends:
migrations/019). The feed's reads then get each event's whole JSON from PostgreSQL (`eventlog.pages`).
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from datetime import datetime, timezone
from typing import Callable
from uuid import UUID

import msgspec

from domain.errors import InvalidInput

_LAYOUT = struct.Struct(">8sQI")


class Cursor(msgspec.Struct, frozen=True):
    epoch_prefix: bytes
    position: int
    fingerprint: int

    def of_log(self, epoch: UUID) -> bool:
        """Whether the cursor was minted by the log `epoch`."""
        return self.epoch_prefix == epoch.bytes[:8]


def fingerprint(stream: str, version: int, recorded_at: datetime) -> int:
    """The crc32 of `stream:version:<recorded_at.isoformat()>` (an asyncpg timestamptz is a UTC datetime, whose
    isoformat drops a zero microsecond part): the text `eventlog.feed_json.print_sql` builds."""
    return zlib.crc32(f"{stream}:{version}:{recorded_at.isoformat()}".encode())


def stored_fingerprint(stream: str, version: int, recorded_at: datetime) -> int:
    """`fingerprint` as the `integer` column `events.feed_fingerprint` holds it: the same 4 bytes, read as a signed
    32-bit number (what `int4send` writes back as those bytes). `recorded_at` is the instant PostgreSQL will hold:
    an aware datetime (its fingerprint is that of the instant in UTC, as read back)."""
    if recorded_at.tzinfo is None:
        raise ValueError("recorded_at must be an aware datetime")
    return as_stored(fingerprint(stream, version, recorded_at.astimezone(timezone.utc)))


def as_stored(crc: int) -> int:
    """A CRC-32 (0 .. 2**32 - 1) as the signed 32-bit `integer` that `events.feed_fingerprint` holds."""
    return crc - (1 << 32) if crc >= 1 << 31 else crc


def stored_of_text(text: str) -> int:
    """`stored_fingerprint` from the fingerprint's text PostgreSQL builds for a row (`eventlog.feed_json`), as
    `minter` hashes it."""
    return as_stored(zlib.crc32(text.encode()))


def epoch_prefix(epoch: UUID) -> bytes:
    """What a cursor carries of the log's epoch (the `bytea` `sql` takes)."""
    return epoch.bytes[:8]


_TEXT_LENGTH = (4 * _LAYOUT.size + 2) // 3  # base64 without its padding


def sql(epoch_prefix: str, position: str, stored: str) -> str:
    """SQL of the cursor (`encode`'s text) from SQL expressions of the epoch's first 8 bytes (`bytea`), the position
    (`bigint`) and the stored fingerprint (`integer`, as `stored_fingerprint` gives it). NULL if any is NULL.
    (`encode(..., 'base64')` pads to 28 characters and breaks lines after 76: `left` keeps the 27 of the text;
    `replace` costs a fifth of `translate` here.)"""
    raw = f"({epoch_prefix}) || int8send(({position})::bigint) || int4send(({stored})::integer)"
    return f"replace(replace(left(encode({raw}, 'base64'), {_TEXT_LENGTH}), '+', '-'), '/', '_')"


def minter(epoch: UUID) -> Callable[[int, str], str]:
    """`mint(position, fingerprint_text)`: the cursor of the log `epoch` at `position`, from the fingerprint's text
    PostgreSQL holds for the event there (`eventlog.feed_json`)."""
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
