"""The clip aggregate: its state, the commands it accepts, `decide` (command -> events) and `evolve`.

Both are pure: the clock, the jitter and the limits arrive in a `Context`, so replaying the log through this
code gives the same states every time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterable, Literal

import msgspec

from domain.errors import Conflict, InvalidInput, StaleAttempt
from domain.events import (
    Detector,
    ExtractionCancelled,
    ExtractionCompleted,
    ExtractionEvent,
    ExtractionFailed,
    ExtractionRequested,
    ExtractionStarted,
    ExtractionTimedOut,
    Mode,
    Priority,
    Reason,
    TimeoutReason,
)
from domain.policy import RetryPolicy, attempt_deadline_seconds, backoff_seconds
from domain.reasons import HANDED_BACK, Decision, after_outcome

Status = Literal["unregistered", "pending", "running", "retrying", "completed", "failed", "cancelled"]

# What a person may cancel: an attempt that is waiting, scheduled or under way.
CANCELLABLE: tuple[Status, ...] = ("pending", "retrying", "running")


class ErrorInfo(msgspec.Struct, frozen=True, gc=False):
    code: str
    message: str
    retryable: bool
    command: list[str] | None = None  # what FFmpeg was run with (secrets redacted), when FFmpeg was involved
    stderr_tail: str | None = None  # its last lines of stderr


class ClipState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    project_id: str
    clip_id: str
    version: int = 0
    status: Status = "unregistered"
    name: str | None = None
    source: str = ""
    start: float = 0.0
    end: float = 0.0
    mode: Mode = "copy"
    priority: Priority = "interactive"
    run: int = 0
    attempt: int = 0
    max_attempts: int = 3
    started: bool = False
    request_reason: Reason | None = None
    not_before: datetime | None = None
    status_since: datetime | None = None
    started_at: datetime | None = None
    deadline_at: datetime | None = None
    worker_id: str | None = None
    last_error: ErrorInfo | None = None
    output: str | None = None
    bytes: int | None = None
    duration_seconds: float | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def registered(self) -> bool:
        return self.version > 0

    @property
    def retry_eligible(self) -> bool:
        """A person may retry it now without waiting for it to be slow."""
        return self.status in ("failed", "retrying", "cancelled")

    @property
    def next_retry_at(self) -> datetime | None:
        return self.not_before if self.status == "retrying" and not self.started else None

    def is_slow(self, now: datetime, slow_after: float) -> bool:
        if self.status not in ("pending", "running") or self.status_since is None:
            return False
        return (now - self.status_since).total_seconds() > slow_after


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a decision needs from outside: the time, a random number, the limits."""

    now: datetime
    jitter: float = 0.5
    policy: RetryPolicy = RetryPolicy()
    attempt_timeout: float = 600.0  # the cap of an attempt's deadline (domain.policy.attempt_deadline_seconds)
    slow_after: float = 300.0
    max_clip_seconds: float = 600.0


# Commands ------------------------------------------------------------------------------------------------


class Register(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    start: float
    end: float
    mode: Mode = "copy"
    name: str | None = None
    priority: Priority = "interactive"


class Start(msgspec.Struct, frozen=True, kw_only=True):
    run: int
    attempt: int
    worker_id: str


class Complete(msgspec.Struct, frozen=True, kw_only=True):
    run: int
    attempt: int
    bytes: int
    duration_seconds: float
    elapsed_seconds: float
    output: str


class Fail(msgspec.Struct, frozen=True, kw_only=True):
    run: int
    attempt: int
    code: str
    message: str
    retryable: bool
    elapsed_seconds: float = 0.0
    command: list[str] | None = None
    stderr_tail: str | None = None


class TimeOut(msgspec.Struct, frozen=True, kw_only=True):
    run: int
    attempt: int
    detected_by: Detector
    reason: TimeoutReason
    elapsed_seconds: float = 0.0
    command: list[str] | None = None
    stderr_tail: str | None = None


class Retry(msgspec.Struct, frozen=True):
    """A person asks for a new run."""


class Cancel(msgspec.Struct, frozen=True):
    """A person stops the clip's current attempt, pending, retrying or running; nothing automatic resumes it."""


class HandBack(msgspec.Struct, frozen=True, kw_only=True):
    """A worker that is shutting down gives its running attempt back; it does not use up an attempt."""

    run: int
    attempt: int
    elapsed_seconds: float = 0.0


Command = Register | Start | Complete | Fail | TimeOut | Retry | Cancel | HandBack



# decide ---------------------------------------------------------------------------------------------------


def decide(state: ClipState, command: Command, ctx: Context) -> list[ExtractionEvent]:
    match command:
        case Register():
            return _register(state, command, ctx)
        case Start(run=run, attempt=attempt, worker_id=worker_id):
            _require_current(state, run, attempt, started=False)
            allowed = attempt_deadline_seconds(state.end - state.start, state.mode, ctx.attempt_timeout)
            deadline = ctx.now + timedelta(seconds=allowed)
            return [ExtractionStarted(run=run, attempt=attempt, worker_id=worker_id, deadline_at=deadline)]
        case Complete():
            _require_current(state, command.run, command.attempt, started=True)
            return [
                ExtractionCompleted(
                    run=command.run,
                    attempt=command.attempt,
                    bytes=command.bytes,
                    duration_seconds=command.duration_seconds,
                    elapsed_seconds=command.elapsed_seconds,
                    output=command.output,
                )
            ]
        case Fail():
            if command.code == HANDED_BACK:
                raise InvalidInput(f"the error code {HANDED_BACK!r} is reserved for HandBack")
            _require_current(state, command.run, command.attempt, started=True)
            failed = ExtractionFailed(
                run=command.run,
                attempt=command.attempt,
                code=command.code,
                message=command.message,
                retryable=command.retryable,
                elapsed_seconds=command.elapsed_seconds,
                command=command.command,
                stderr_tail=command.stderr_tail,
            )
            return [failed, *_auto_retry(state, retry_decision(state, failed), ctx)]
        case TimeOut():
            _require_current(state, command.run, command.attempt, started=True)
            timed_out = ExtractionTimedOut(
                run=command.run,
                attempt=command.attempt,
                detected_by=command.detected_by,
                reason=command.reason,
                deadline_at=state.deadline_at,
                elapsed_seconds=command.elapsed_seconds,
                command=command.command,
                stderr_tail=command.stderr_tail,
            )
            return [timed_out, *_auto_retry(state, retry_decision(state, timed_out), ctx)]
        case Retry():
            return _manual_retry(state, ctx)
        case Cancel():
            return _cancel(state, ctx)
        case HandBack():
            _require_current(state, command.run, command.attempt, started=True)
            interrupted = ExtractionFailed(
                run=command.run,
                attempt=command.attempt,
                code=HANDED_BACK,
                message="The worker was shut down before the clip was done; it was handed back to another worker.",
                retryable=True,
                elapsed_seconds=command.elapsed_seconds,
            )
            again = _request(
                state,
                run=state.run,
                attempt=state.attempt + 1,
                reason="handed_back",
                not_before=ctx.now,
                max_attempts=state.max_attempts + 1,
            )
            return [interrupted, again]
    raise TypeError(f"unknown command {command!r}")


def _register(state: ClipState, command: Register, ctx: Context) -> list[ExtractionEvent]:
    if not (0 <= command.start < command.end):
        raise InvalidInput(
            f"start and end must satisfy 0 <= start < end (got start={command.start}, end={command.end})"
        )
    length = command.end - command.start
    if length > ctx.max_clip_seconds:
        raise InvalidInput(
            f"the clip is {length:g} s long; the longest clip that may be requested is {ctx.max_clip_seconds:g} s"
        )
    if state.registered:
        same = (state.source, state.start, state.end, state.mode, state.name, state.priority) == (
            command.source,
            command.start,
            command.end,
            command.mode,
            command.name,
            command.priority,
        )
        if same:
            return []
        raise Conflict(f"clip {state.clip_id!r} is already registered with other fields")
    return [
        _request(
            state,
            run=1,
            attempt=1,
            reason="registered",
            not_before=ctx.now,
            max_attempts=ctx.policy.max_attempts,
            fields=command,
        )
    ]


def _request(
    state: ClipState,
    *,
    run: int,
    attempt: int,
    reason: Reason,
    not_before: datetime,
    max_attempts: int,
    fields: Register | None = None,
) -> ExtractionRequested:
    f = fields or Register(
        source=state.source, start=state.start, end=state.end, mode=state.mode, name=state.name, priority=state.priority
    )
    return ExtractionRequested(
        run=run,
        attempt=attempt,
        reason=reason,
        not_before=not_before,
        source=f.source,
        start=f.start,
        end=f.end,
        mode=f.mode,
        name=f.name,
        max_attempts=max_attempts,
        priority=f.priority,
    )


def retry_decision(
    state: ClipState, outcome: ExtractionFailed | ExtractionTimedOut | ExtractionCancelled
) -> Decision:
    """The retry rule (`domain.reasons.after_outcome`) for an ending of the clip's current attempt other than
    success: `decide` asks it whether to request another attempt, `evolve` which status the outcome leaves, the
    replay why."""
    if isinstance(outcome, ExtractionCancelled):
        return after_outcome(
            attempt=state.attempt, max_attempts=state.max_attempts, code="cancelled", retryable=True,
            stopped_by_person=True,
        )  # fmt: skip
    if isinstance(outcome, ExtractionTimedOut):
        return after_outcome(
            attempt=state.attempt,
            max_attempts=state.max_attempts,
            code="timed_out",
            retryable=True,
            stopped_by_person=outcome.detected_by == "user",
        )
    return after_outcome(
        attempt=state.attempt, max_attempts=state.max_attempts, code=outcome.code, retryable=outcome.retryable
    )


def _auto_retry(state: ClipState, decision: Decision, ctx: Context) -> list[ExtractionEvent]:
    if not decision.auto_retry:
        return []
    delay = backoff_seconds(ctx.policy, state.attempt, ctx.jitter)
    return [
        _request(
            state,
            run=state.run,
            attempt=state.attempt + 1,
            reason="auto_retry",
            not_before=ctx.now + timedelta(seconds=delay),
            max_attempts=state.max_attempts,
        )
    ]


def _manual_retry(state: ClipState, ctx: Context) -> list[ExtractionEvent]:
    if not state.registered:
        raise Conflict("the clip is not registered")
    slow = state.is_slow(ctx.now, ctx.slow_after)
    if state.status == "completed":
        raise Conflict("the clip is already extracted")
    if state.status == "pending" and state.request_reason == "manual_retry" and state.attempt == 1 and not slow:
        return []  # a second click while the first retry waits for a worker
    if state.status in ("pending", "running") and not slow:
        raise Conflict(
            f"the clip is {state.status} and not yet slow; it may be retried once it has been "
            f"{state.status} for {ctx.slow_after:g} s",
        )
    events: list[ExtractionEvent] = []
    if state.status == "running":
        events.append(
            ExtractionTimedOut(
                run=state.run,
                attempt=state.attempt,
                detected_by="user",
                reason="user",
                deadline_at=state.deadline_at,
                elapsed_seconds=_elapsed(state.started_at, ctx.now),
            )
        )
    events.append(
        _request(
            state,
            run=state.run + 1,
            attempt=1,
            reason="manual_retry",
            not_before=ctx.now,
            max_attempts=ctx.policy.max_attempts,
        )
    )
    return events


def _cancel(state: ClipState, ctx: Context) -> list[ExtractionEvent]:
    if not state.registered:
        raise Conflict("the clip is not registered")
    if state.status == "cancelled":
        return []  # a second click
    if state.status not in CANCELLABLE:
        what = "already extracted" if state.status == "completed" else state.status
        raise Conflict(f"the clip is {what}; only a pending, retrying or running clip can be cancelled")
    elapsed = _elapsed(state.started_at, ctx.now) if state.status == "running" else 0.0
    cancelled = ExtractionCancelled(run=state.run, attempt=state.attempt, by="user", elapsed_seconds=elapsed)
    return [cancelled, *_auto_retry(state, retry_decision(state, cancelled), ctx)]  # never: a person stopped it


def _elapsed(since: datetime | None, now: datetime) -> float:
    return max(0.0, (now - since).total_seconds()) if since else 0.0


def _require_current(state: ClipState, run: int, attempt: int, *, started: bool) -> None:
    if not state.registered or (state.run, state.attempt) != (run, attempt):
        raise StaleAttempt(
            f"attempt {run}.{attempt} is not the clip's current attempt ({state.run}.{state.attempt})"
        )
    if started and state.status != "running":
        raise StaleAttempt(f"attempt {run}.{attempt} is not running (the clip is {state.status})")
    if not started and (state.started or state.status not in ("pending", "retrying")):
        raise StaleAttempt(f"attempt {run}.{attempt} has already started or ended (the clip is {state.status})")


# evolve ---------------------------------------------------------------------------------------------------

# By reason. "deadline", "lease" and "user" keep the words the clip got when the message was chosen by detector
# (worker, reaper, user), so the events of older versions (upcast to these reasons) still fold to the same state.
TIMEOUT_MESSAGES: dict[str, str] = {
    "deadline": "the extraction took longer than the time allowed for one attempt and was stopped",
    "lease": "the worker running the extraction stopped responding (lost or past its deadline)",
    "stalled": "FFmpeg stopped making progress and was stopped",
    "user": "the extraction was taking longer than expected and was stopped by a retry",
}


def evolve(state: ClipState, event: ExtractionEvent, at: datetime) -> ClipState:
    """The state right after `event`, recorded at `at`."""
    version = state.version + 1
    match event:
        case ExtractionRequested():
            first = not state.registered
            status: Status = "retrying" if event.reason == "auto_retry" else "pending"
            return msgspec.structs.replace(
                state,
                version=version,
                updated_at=at,
                status=status,
                name=event.name,
                source=event.source,
                start=event.start,
                end=event.end,
                mode=event.mode,
                priority=event.priority,
                run=event.run,
                attempt=event.attempt,
                max_attempts=event.max_attempts,
                started=False,
                request_reason=event.reason,
                not_before=event.not_before,
                status_since=at,
                started_at=None,
                deadline_at=None,
                worker_id=None,
                last_error=None if event.reason == "manual_retry" else state.last_error,
                created_at=at if first else state.created_at,
            )
        case ExtractionStarted():
            return msgspec.structs.replace(
                state,
                version=version,
                updated_at=at,
                status="running",
                started=True,
                status_since=at,
                started_at=at,
                deadline_at=event.deadline_at,
                worker_id=event.worker_id,
            )
        case ExtractionCompleted():
            return msgspec.structs.replace(
                state,
                version=version,
                updated_at=at,
                status="completed",
                status_since=at,
                last_error=None,
                output=event.output,
                bytes=event.bytes,
                duration_seconds=event.duration_seconds,
            )
        case ExtractionFailed():
            error = _error(event, event.code, event.message, event.retryable)
            return _after_outcome(state, version, at, error, retry_decision(state, event))
        case ExtractionTimedOut():
            error = _error(event, "timed_out", TIMEOUT_MESSAGES[event.reason], True)
            return _after_outcome(state, version, at, error, retry_decision(state, event))
        case ExtractionCancelled():
            # The last error stays: it says what happened before the person stopped the clip.
            return msgspec.structs.replace(state, version=version, updated_at=at, status="cancelled", status_since=at)
    raise TypeError(f"unknown event {event!r}")


def _error(event: ExtractionFailed | ExtractionTimedOut, code: str, message: str, retryable: bool) -> ErrorInfo:
    """The clip's last error after `event`, with what FFmpeg was run with and said, when the event has it."""
    return ErrorInfo(code, message, retryable, command=event.command, stderr_tail=event.stderr_tail)


# The status an outcome leaves, by the retry rule's decision. A hand-back's request follows in the same append.
_STATUS_AFTER: dict[str, Status] = {"retryable": "retrying", "handed_back": "pending"}


def _after_outcome(state: ClipState, version: int, at: datetime, error: ErrorInfo, decision: Decision) -> ClipState:
    status = _STATUS_AFTER.get(decision.why, "failed")
    return msgspec.structs.replace(
        state, version=version, updated_at=at, status=status, status_since=at, last_error=error
    )


def fold(initial: ClipState, history: Iterable[tuple[ExtractionEvent, datetime]]) -> ClipState:
    state = initial
    for event, at in history:
        state = evolve(state, event, at)
    return state
