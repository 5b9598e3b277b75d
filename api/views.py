"""The shapes the API sends: one msgspec schema serves the server, the OpenAPI document and the UI. An event's shape,
`EventView`, is the feed reader's own (eventlog/pages.py): pages, a clip's history and the WebSocket send it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.plugins import OpenAPISchemaPlugin
from litestar.typing import FieldDefinition

from domain.clip import ClipState
from eventlog.pages import EventView
from eventlog.progress import Progress
from projections.replay import Step, detail
from runtime.settings import Settings

class RawJsonSchema(OpenAPISchemaPlugin):
    """`msgspec.Raw` in the OpenAPI document: the JSON text of an event's `data`, passed through as it is stored, is
    an object."""

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return field_definition.annotation is msgspec.Raw

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        return Schema(type=OpenAPIType.OBJECT, additional_properties=Schema())


ClipStatus = Literal["pending", "running", "retrying", "completed", "failed", "cancelled"]


class ErrorView(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    retryable: bool
    command: list[str] | None = None  # the FFmpeg arguments of the attempt, secrets redacted
    stderr_tail: str | None = None  # FFmpeg's last lines of stderr


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
    priority: Literal["interactive", "batch"] = "interactive"
    # Live, not from the log: `progress` only while running, `queue_position` (attempts ahead of it) and
    # `queue_eta_seconds` (until it is extracted, from recent attempt durations) only while pending.
    progress: Progress | None = None
    queue_position: int | None = None
    queue_eta_seconds: float | None = None


class EventPage(msgspec.Struct):
    """A page of `GET /api/events`."""

    events: list[EventView]
    next_cursor: str


class StoryStep(msgspec.Struct):
    """One event of a clip's story (`GET .../clips/{clip_id}/story`): what happened, then where the clip stood and
    why, in the words of `domain.story` (the reason comes from the retry rule that decided)."""

    position: int
    version: int
    type: str
    recorded_at: datetime
    what: str  # what happened, in full (an error's message, who detected a timeout)
    status: str  # the clip's status right after the event
    run: int
    attempt: int
    max_attempts: int
    next_attempt_at: datetime | None  # when a waiting clip's next attempt may start
    because: str  # a keyword: registered, backoff, retryable, budget_used_up, not_retryable, ...
    reason: str  # why, in words


def story_step(step: Step) -> StoryStep:
    e, why = step.event, step.why
    return StoryStep(
        position=e.position, version=e.version, type=e.type, recorded_at=e.recorded_at, what=detail(e),
        status=why.status, run=why.run, attempt=why.attempt, max_attempts=why.max_attempts,
        next_attempt_at=why.next_attempt_at, because=why.because, reason=why.text,
    )  # fmt: skip


ClipIdField = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="[A-Za-z0-9_-]{1,64}")]


class RegisterClip(msgspec.Struct, forbid_unknown_fields=True):
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=1024, description="a video under the media root")]
    start: Annotated[float, msgspec.Meta(description="seconds; 0 <= start < end")]
    end: Annotated[float, msgspec.Meta(description="seconds; at most CLIPLOG_MAX_CLIP_SECONDS after start")]
    clip_id: ClipIdField | None = None
    mode: Literal["copy", "accurate"] = "copy"
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    priority: Literal["interactive", "batch"] = "interactive"


class StatusFilter(msgspec.Struct, forbid_unknown_fields=True):
    """The optional body of the bulk routes: which clips they act on, by status."""

    status: list[ClipStatus] | None = None


class SkippedClip(msgspec.Struct):
    clip_id: str
    reason: str


class BulkResult(msgspec.Struct):
    """What a bulk route did: how many clips it changed, and each clip it left as it was, with why."""

    changed: int
    skipped: list[SkippedClip]


def clip_view(
    state: ClipState,
    position: int,
    now: datetime,
    settings: Settings,
    *,
    progress: Progress | None = None,
    queue_position: int | None = None,
    queue_eta_seconds: float | None = None,
) -> ClipView:
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
        last_error=ErrorView(error.code, error.message, error.retryable, error.command, error.stderr_tail) if error else None,
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
        priority=state.priority,
        progress=progress if state.status == "running" else None,
        queue_position=queue_position if state.status == "pending" else None,
        queue_eta_seconds=queue_eta_seconds if state.status == "pending" else None,
    )
