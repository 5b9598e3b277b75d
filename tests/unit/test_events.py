"""Events: encode_data / decode round trips (through JSON as stored), schema versions and upcasters."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain import events as ev
from domain.events import (
    SCHEMA_VERSION,
    UPCASTERS,
    ExtractionCompleted,
    ExtractionFailed,
    ExtractionRequested,
    ExtractionStarted,
    ExtractionTimedOut,
    decode,
    encode_data,
    type_of,
)

_UPCASTERS_AT_IMPORT = dict(UPCASTERS)
_SCHEMA_VERSION_AT_IMPORT = dict(SCHEMA_VERSION)
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)

times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(timezone.utc)
)
floats = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
texts = st.text(max_size=20)
runs = st.integers(1, 1000)

events = st.one_of(
    st.builds(
        ExtractionRequested,
        run=runs,
        attempt=runs,
        reason=st.sampled_from(["registered", "auto_retry", "manual_retry", "handed_back"]),
        not_before=times,
        source=texts,
        start=floats,
        end=floats,
        mode=st.sampled_from(["copy", "accurate"]),
        name=st.none() | texts,
        max_attempts=st.integers(1, 10),
    ),
    st.builds(ExtractionStarted, run=runs, attempt=runs, worker_id=texts, deadline_at=times),
    st.builds(
        ExtractionCompleted,
        run=runs,
        attempt=runs,
        bytes=st.integers(0, 2**53),
        duration_seconds=floats,
        elapsed_seconds=floats,
        output=texts,
    ),
    st.builds(
        ExtractionFailed,
        run=runs,
        attempt=runs,
        code=texts,
        message=texts,
        retryable=st.booleans(),
        elapsed_seconds=floats,
    ),
    st.builds(
        ExtractionTimedOut,
        run=runs,
        attempt=runs,
        detected_by=st.sampled_from(["worker", "reaper", "user"]),
        reason=st.sampled_from(["deadline", "lease", "stalled", "user"]),
        deadline_at=st.none() | times,
        elapsed_seconds=floats,
    ),
)


@given(events)
def test_encode_then_decode_through_json_gives_the_event_back(event):
    data = encode_data(event)
    assert "type" not in data
    stored = msgspec.json.decode(msgspec.json.encode(data))  # what a jsonb column gives back
    assert decode(type_of(event), SCHEMA_VERSION[type_of(event)], stored) == event


@given(events)
def test_decode_json_the_bulk_readers_path_gives_the_same_event(event):
    text = msgspec.json.encode(encode_data(event))
    assert ev.decode_json(type_of(event), SCHEMA_VERSION[type_of(event)], text) == event


def test_decode_json_knows_every_event_type():
    cancelled = ev.ExtractionCancelled(run=2, attempt=1, elapsed_seconds=1.5)
    assert ev.decode_json("extraction.cancelled", 1, msgspec.json.encode(encode_data(cancelled))) == cancelled
    assert set(ev._DECODERS) == set(SCHEMA_VERSION)  # noqa: SLF001


def test_every_event_type_has_a_schema_version():
    tags = {t.__struct_config__.tag for t in (ExtractionRequested, ExtractionStarted, *ev.ENDINGS)}
    assert tags == set(SCHEMA_VERSION)


def test_new_fields_get_their_defaults_from_old_data():
    data = {"run": 1, "attempt": 2, "code": "ffmpeg_exit", "message": "exit 1", "retryable": True}
    assert decode("extraction.failed", 1, data) == ExtractionFailed(
        run=1, attempt=2, code="ffmpeg_exit", message="exit 1", retryable=True, elapsed_seconds=0.0
    )


def test_decode_rejects_unknown_types_and_bad_data():
    with pytest.raises(ValueError, match="unknown event type"):
        decode("extraction.exploded", 1, {"run": 1, "attempt": 1})
    with pytest.raises(ev.UndecodableEvent, match="worker_id") as missing:
        decode("extraction.started", 1, {"run": 1, "attempt": 1})  # worker_id and deadline_at missing
    assert isinstance(missing.value.__cause__, msgspec.ValidationError)


def test_an_upcaster_converts_data_of_an_older_schema_version(monkeypatch):
    """A fake version 0 of extraction.failed named its fields `error_code`/`error` and had no `retryable`."""
    seen = []

    def v0_to_v1(data):
        seen.append(dict(data))
        data = dict(data)
        data["code"] = data.pop("error_code")
        data["message"] = data.pop("error")
        data["retryable"] = data["code"] != "source_missing"
        return data

    monkeypatch.setitem(UPCASTERS, ("extraction.failed", 0), v0_to_v1)
    old = {"run": 2, "attempt": 1, "error_code": "source_missing", "error": "no such file"}
    assert decode("extraction.failed", 0, old) == ExtractionFailed(
        run=2, attempt=1, code="source_missing", message="no such file", retryable=False
    )
    assert seen == [old]
    # Current data does not go through it.
    current = encode_data(ExtractionFailed(run=1, attempt=1, code="x", message="y", retryable=True))
    decode("extraction.failed", 1, current)
    assert len(seen) == 1


def test_upcasters_chain_up_to_the_current_version(monkeypatch):
    """Pretend extraction.timed_out is at version 4 now: data at version 2 passes through 2->3 and 3->4."""
    calls = []

    def two_to_three(data):
        calls.append(2)
        return {**data, "detected_by": {"lease": "reaper"}.get(data["detected_by"], data["detected_by"])}

    def three_to_four(data):
        calls.append(3)
        return {**data, "elapsed_seconds": data.pop("elapsed_ms", 0) / 1000}

    monkeypatch.setitem(SCHEMA_VERSION, "extraction.timed_out", 4)
    monkeypatch.setitem(UPCASTERS, ("extraction.timed_out", 2), two_to_three)
    monkeypatch.setitem(UPCASTERS, ("extraction.timed_out", 3), three_to_four)
    deadline = T0 + timedelta(minutes=10)
    v2 = {"run": 1, "attempt": 1, "detected_by": "lease", "reason": "lease", "deadline_at": deadline.isoformat(),
          "elapsed_ms": 612400}
    assert decode("extraction.timed_out", 2, v2) == ExtractionTimedOut(
        run=1, attempt=1, detected_by="reaper", reason="lease", deadline_at=deadline, elapsed_seconds=612.4
    )
    assert calls == [2, 3]
    calls.clear()
    decode("extraction.timed_out", 4, {"run": 1, "attempt": 1, "detected_by": "worker", "reason": "deadline"})
    assert calls == []


@pytest.mark.parametrize(
    ("detected_by", "reason"), [("worker", "deadline"), ("reaper", "lease"), ("user", "user")]
)
def test_a_timed_out_event_stored_before_reasons_decodes_with_the_reason_it_had(detected_by, reason):
    v1 = {"run": 2, "attempt": 3, "detected_by": detected_by, "deadline_at": None, "elapsed_seconds": 4.5}
    assert decode("extraction.timed_out", 1, v1) == ExtractionTimedOut(
        run=2, attempt=3, detected_by=detected_by, reason=reason, elapsed_seconds=4.5
    )


def test_a_missing_upcaster_is_an_error(monkeypatch):
    monkeypatch.setitem(SCHEMA_VERSION, "extraction.started", 2)
    with pytest.raises(ev.UndecodableEvent, match="no upcaster"):
        decode("extraction.started", 1, {"run": 1, "attempt": 1, "worker_id": "w", "deadline_at": T0.isoformat()})


def test_the_registries_are_restored_after_the_tests_above():
    assert UPCASTERS == _UPCASTERS_AT_IMPORT
    assert SCHEMA_VERSION == _SCHEMA_VERSION_AT_IMPORT
