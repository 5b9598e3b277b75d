"""The shapes the API sends: one msgspec schema serves the server, the OpenAPI document and the UI."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

from domain.clip import ClipState
from eventlog import cursor
from eventlog.store import StoredEvent
from runtime.settings import Settings

ClipStatus = Literal["pending", "running", "retrying", "completed", "failed"]


class ErrorView(msgspec.Struct):
    code: str
    message: str
    retryable: bool


class ClipView(msgspec.Struct):
    clip_id: str
    project_id: str
    name: str | None
    source: str
    start: float
    end: float
    mode: Literal["copy", "accurate"]
    status: ClipStatus
    slow: bool
    run: int
    attempt: int
    max_attempts: int
    retry_eligible: bool
    next_retry_at: datetime | None
    started_at: datetime | None
    deadline_at: datetime | None
    last_error: ErrorView | None
    file_url: str | None
    version: int
    position: int
    updated_at: datetime | None
    status_since: datetime | None = None
    created_at: datetime | None = None
    duration_seconds: float | None = None
    bytes: int | None = None


class EventView(msgspec.Struct):
    position: int
    cursor: str
    type: str
    project_id: str
    clip_id: str
    version: int
    recorded_at: datetime
    clip_status: str
    data: dict[str, Any]


class EventPage(msgspec.Struct):
    events: list[EventView]
    next_cursor: str


ClipIdField = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="[A-Za-z0-9_-]{1,64}")]


class RegisterClip(msgspec.Struct, forbid_unknown_fields=True):
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=1024, description="a video under the media root")]
    start: Annotated[float, msgspec.Meta(description="seconds; 0 <= start < end")]
    end: Annotated[float, msgspec.Meta(description="seconds; at most CLIPLOG_MAX_CLIP_SECONDS after start")]
    clip_id: ClipIdField | None = None
    mode: Literal["copy", "accurate"] = "copy"
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None


def clip_view(state: ClipState, position: int, now: datetime, settings: Settings) -> ClipView:
    slow = state.is_slow(now, settings.slow_after)
    error = state.last_error
    return ClipView(
        clip_id=state.clip_id,
        project_id=state.project_id,
        name=state.name,
        source=state.source,
        start=state.start,
        end=state.end,
        mode=state.mode,
        status=state.status,  # type: ignore[arg-type]
        slow=slow,
        run=state.run,
        attempt=state.attempt,
        max_attempts=state.max_attempts,
        retry_eligible=state.retry_eligible or slow,
        next_retry_at=state.next_retry_at,
        started_at=state.started_at,
        deadline_at=state.deadline_at,
        last_error=ErrorView(error.code, error.message, error.retryable) if error else None,
        file_url=(
            f"/api/clips/projects/{state.project_id}/clips/{state.clip_id}/file" if state.status == "completed" else None
        ),
        version=state.version,
        position=position,
        updated_at=state.updated_at,
        status_since=state.status_since,
        created_at=state.created_at,
        duration_seconds=state.duration_seconds if state.status == "completed" else None,
        bytes=state.bytes if state.status == "completed" else None,
    )


def event_view(event: StoredEvent, epoch: UUID) -> EventView:
    print_ = cursor.fingerprint(event.stream, event.version, event.recorded_at)
    return EventView(
        position=event.position,
        cursor=cursor.encode(epoch, event.position, print_),
        type=event.type,
        project_id=event.project_id,
        clip_id=event.clip_id,
        version=event.version,
        recorded_at=event.recorded_at,
        clip_status=event.clip_status,
        data=event.data,
    )
