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

import msgspec

from domain.errors import InvalidInput

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
