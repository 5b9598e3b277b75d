"""Property tests of the two decoders that read what others wrote: any stored event row (`domain.events.decode`)
and any cursor text (`eventlog.cursor.decode`) gives a value or the decoder's one clear error, never a crash."""

from __future__ import annotations

import base64
import struct
from typing import Any, Callable

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import InvalidInput
from domain.events import SCHEMA_VERSION, ExtractionEvent, UndecodableEvent, decode, decode_json
from eventlog import cursor

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
# Field names the events really have, so that many generated objects come close to a real event.
names = st.sampled_from(
    ["run", "attempt", "reason", "not_before", "source", "start", "end", "mode", "name", "max_attempts",
     "worker_id", "deadline_at", "bytes", "duration_seconds", "elapsed_seconds", "output", "code", "message",
     "retryable", "detected_by", "type"]
)
near_events = st.dictionaries(
    names,
    json_values | st.sampled_from(["registered", "copy", "worker", "2026-12-01T09:00:00+00:00", 1, 2.5, True]),
    max_size=10,
)
types = st.sampled_from(sorted(SCHEMA_VERSION)) | st.text(max_size=30)


def _decodes_or_says_why(decoder: Callable[..., Any], event_type: str, version: Any, data: Any) -> None:
    try:
        event = decoder(event_type, version, data)
    except UndecodableEvent as error:
        assert str(error)
    else:
        assert isinstance(event, ExtractionEvent.__args__)  # type: ignore[attr-defined]


@given(types, st.integers(-3, 5) | st.none() | st.text(max_size=3), json_values | near_events)
def test_any_stored_event_row_decodes_or_is_undecodable(event_type: str, version: Any, data: Any) -> None:
    _decodes_or_says_why(decode, event_type, version, data)


@given(types, st.integers(-1, 3), st.binary(max_size=200) | json_values.map(msgspec.json.encode)
       | near_events.map(msgspec.json.encode))
def test_any_stored_bytes_decode_or_are_undecodable(event_type: str, version: int, raw: bytes) -> None:
    """`decode_json` (the bulk readers' path, from the JSON text PostgreSQL hands over): whatever the bytes, an
    event or UndecodableEvent."""
    _decodes_or_says_why(decode_json, event_type, version, raw)


cursor_like = st.builds(
    lambda prefix, position, print_: base64.urlsafe_b64encode(struct.pack(">8sQI", prefix, position, print_))
    .decode()
    .rstrip("="),
    st.binary(min_size=8, max_size=8),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
)


@given(st.text(max_size=60) | cursor_like | st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode()))
def test_any_cursor_text_decodes_or_is_invalid_input(text: str) -> None:
    try:
        decoded = cursor.decode(text)
    except InvalidInput as error:
        assert "not a cursor" in error.detail
    else:
        assert 0 <= decoded.position <= 2**63 - 1 and len(decoded.epoch_prefix) == 8
        assert 0 <= decoded.fingerprint < 2**32
