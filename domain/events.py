"""The extraction events: one msgspec tagged union, stored with a schema version and upcast on read.

A stored event is `(type, schema_version, data)`. `decode` upgrades old `data` to the current schema through
`UPCASTERS` before converting it, so rows written by older code stay readable. New fields get defaults.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Literal, Union, get_args

import msgspec

Reason = Literal["registered", "auto_retry", "manual_retry", "handed_back"]
Mode = Literal["copy", "accurate"]
Detector = Literal["worker", "reaper", "user"]
# How the dispatcher treats an attempt while it waits for a worker (domain/dispatch.py): interactive work first,
# batch work with a guaranteed share.
Priority = Literal["interactive", "batch"]
# Why an attempt was timed out: it passed its deadline, its worker's lease expired, FFmpeg stopped making progress
# for CLIPLOG_STALL_AFTER seconds, or a person retried it while it was slow.
TimeoutReason = Literal["deadline", "lease", "stalled", "user"]
Canceller = Literal["user"]


class Event(msgspec.Struct, tag_field="type", frozen=True, kw_only=True, gc=False):
    run: int
    attempt: int


class ExtractionRequested(Event, tag="extraction.requested"):
    reason: Reason
    not_before: datetime
    source: str
    start: float
    end: float
    mode: Mode = "copy"
    name: str | None = None
    max_attempts: int = 3
    priority: Priority = "interactive"


class ExtractionStarted(Event, tag="extraction.started"):
    worker_id: str
    deadline_at: datetime


class ExtractionCompleted(Event, tag="extraction.completed"):
    bytes: int
    duration_seconds: float
    elapsed_seconds: float
    output: str = ""


class ExtractionFailed(Event, tag="extraction.failed"):
    code: str
    message: str
    retryable: bool
    elapsed_seconds: float = 0.0
    command: list[str] | None = None  # the FFmpeg arguments, secrets redacted (handlers/ffmpeg.py redact)
    stderr_tail: str | None = None  # its last lines of stderr


class ExtractionTimedOut(Event, tag="extraction.timed_out"):
    detected_by: Detector
    reason: TimeoutReason
    deadline_at: datetime | None = None
    elapsed_seconds: float = 0.0
    command: list[str] | None = None
    stderr_tail: str | None = None


class ExtractionCancelled(Event, tag="extraction.cancelled"):
    """A person cancelled the attempt (pending, retrying or running): the clip is `cancelled` until a person retries."""

    by: Canceller = "user"
    elapsed_seconds: float = 0.0


ExtractionEvent = Union[
    ExtractionRequested,
    ExtractionStarted,
    ExtractionCompleted,
    ExtractionFailed,
    ExtractionTimedOut,
    ExtractionCancelled,
]

# The events that end a started attempt; a cancel ends an attempt whether it started or not.
OUTCOMES = (ExtractionCompleted, ExtractionFailed, ExtractionTimedOut)
ENDINGS = (*OUTCOMES, ExtractionCancelled)

# Bump a type's version here when its data changes shape, and add an upcaster from the old version.
SCHEMA_VERSION: dict[str, int] = {
    "extraction.requested": 1,
    "extraction.started": 1,
    "extraction.completed": 1,
    "extraction.failed": 1,
    "extraction.timed_out": 2,
    "extraction.cancelled": 1,
}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
# (type, version) -> function taking data at that version and returning it at version + 1.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def _timed_out_reason(data: dict[str, Any]) -> dict[str, Any]:
    """timed_out v1 -> v2: a `reason`. Before stall detection a worker timed out only at the deadline, a person only
    by a retry, and the reaper almost always for an expired lease (it did not say which)."""
    reason = {"worker": "deadline", "reaper": "lease", "user": "user"}[data["detected_by"]]
    return {**data, "reason": reason}


UPCASTERS[("extraction.timed_out", 1)] = _timed_out_reason


def type_of(event: ExtractionEvent) -> str:
    return event.__struct_config__.tag  # type: ignore[return-value]


def encode_data(event: ExtractionEvent) -> dict[str, Any]:
    """The event's fields as JSON-ready builtins, without its type tag."""
    data = msgspec.to_builtins(event)
    data.pop("type")
    return data


class UndecodableEvent(ValueError):
    """A stored event this code cannot read: an unknown type, a schema version it has no upcaster for (older) or
    does not know yet (written by a newer version), or data that does not fit the type."""


def decode(event_type: str, schema_version: int, data: Any) -> ExtractionEvent:
    """The event stored as `(event_type, schema_version, data)`, upcast to the current schema; UndecodableEvent
    (a ValueError) for anything else, never another exception."""
    current = SCHEMA_VERSION.get(event_type)
    if current is None:
        raise UndecodableEvent(f"unknown event type {event_type!r}")
    if not isinstance(schema_version, int) or schema_version > current:
        raise UndecodableEvent(
            f"{event_type} version {schema_version!r} is newer than this code knows ({current}): upgrade cliplog"
        )
    if not isinstance(data, dict):
        raise UndecodableEvent(f"{event_type} data must be a JSON object, not {type(data).__name__}")
    try:
        while schema_version < current:
            upcast = UPCASTERS.get((event_type, schema_version))
            if upcast is None:
                raise UndecodableEvent(f"{event_type} version {schema_version} has no upcaster to {schema_version + 1}")
            data = upcast(data)
            schema_version += 1
        return msgspec.convert({**data, "type": event_type}, ExtractionEvent)
    except UndecodableEvent:
        raise
    except (msgspec.ValidationError, TypeError, ValueError, KeyError) as error:
        raise UndecodableEvent(f"{event_type} version {schema_version}: bad data: {error}") from error


_DECODERS: dict[str, msgspec.json.Decoder] = {
    cls.__struct_config__.tag: msgspec.json.Decoder(cls) for cls in get_args(ExtractionEvent)  # type: ignore[misc]
}


def decode_json(event_type: str, schema_version: int, data: bytes | str) -> ExtractionEvent:
    """`decode` from the data's JSON text: one pass straight into the event when it is at the current schema (the
    bulk readers' path: rebuild), through `decode`'s upcasters when it is older."""
    try:
        if SCHEMA_VERSION.get(event_type) == schema_version:
            return _DECODERS[event_type].decode(data)
        parsed = msgspec.json.decode(data)
    except msgspec.DecodeError as error:  # not JSON, or not this event (ValidationError is a DecodeError)
        raise UndecodableEvent(f"{event_type} version {schema_version}: bad data: {error}") from error
    return decode(event_type, schema_version, parsed)
