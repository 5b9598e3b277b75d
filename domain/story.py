"""A clip's story: after each event, where the clip stands (status, attempt n of m, when the next attempt may start)
and why, in words. Pure, like `evolve`: the reason for an outcome is the retry rule's own `Decision`
(`domain.clip.retry_decision`), the one `decide` and `evolve` acted on."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from domain.clip import TIMEOUT_MESSAGES, ClipState, Status, evolve, retry_decision
from domain.events import (
    ExtractionCancelled,
    ExtractionCompleted,
    ExtractionEvent,
    ExtractionFailed,
    ExtractionRequested,
    ExtractionStarted,
    ExtractionTimedOut,
)
from domain.reasons import Decision, Why

Because = Literal["registered", "backoff", "manual_retry", "handed_back", "running", "completed"] | Why


class Explanation(msgspec.Struct, frozen=True, kw_only=True):
    """The clip right after an event, and why it is there."""

    status: Status
    run: int
    attempt: int
    max_attempts: int
    next_attempt_at: datetime | None  # when a pending or retrying clip's next attempt may start
    because: Because
    text: str
    decision: Decision | None = None  # the retry rule's decision, after an outcome that was not a success

    @property
    def position_line(self) -> str:
        """`retrying, attempt 1 of 3, next attempt at ...`"""
        line = f"{self.status}, attempt {self.attempt} of {self.max_attempts}"
        if self.run > 1:
            line += f" of run {self.run}"
        if self.next_attempt_at is not None:
            line += f", next attempt at {_when(self.next_attempt_at)}"
        return line


def _when(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds")


def explain(before: ClipState, event: ExtractionEvent, after: ClipState, at: datetime) -> Explanation:
    """Why `event`, recorded at `at`, took the clip from `before` to `after`."""
    decision: Decision | None = None
    because: Because
    match event:
        case ExtractionRequested(reason="auto_retry"):
            delay = (event.not_before - at).total_seconds()
            because, text = "backoff", (
                f"attempt {event.attempt} of {event.max_attempts} waits until {_when(event.not_before)} "
                f"({delay:.1f} s): the backoff after attempt {event.attempt - 1} failed (it doubles with each failed "
                "attempt, up to a cap, with jitter)"
            )
        case ExtractionRequested(reason="manual_retry"):
            because, text = "manual_retry", (
                f"a person asked for a new run ({event.run}): attempt 1 of {event.max_attempts} may start at once, "
                "with a fresh budget"
            )
        case ExtractionRequested(reason="handed_back"):
            because, text = "handed_back", (
                f"handed back: attempt {event.attempt} of {event.max_attempts} may start at once on another worker "
                "(the budget grew by one: a hand-back does not use up an attempt)"
            )
        case ExtractionRequested():
            because, text = "registered", (
                f"registered: attempt 1 of {event.max_attempts} may start at once; waiting for a worker"
            )
        case ExtractionStarted():
            because, text = "running", (
                f"attempt {event.attempt} of {before.max_attempts} running on {event.worker_id}; "
                f"its deadline is {_when(event.deadline_at)}"
            )
        case ExtractionCompleted():
            because, text = "completed", (
                f"extracted: {event.bytes} bytes, {event.duration_seconds:g} s of video in "
                f"{event.elapsed_seconds:g} s; nothing more to do"
            )
        case ExtractionFailed() | ExtractionTimedOut() | ExtractionCancelled():
            decision = retry_decision(before, event)
            because, text = decision.why, decision.explain()
            if isinstance(event, ExtractionCancelled):
                text = f"cancelled by the {event.by} at attempt {before.attempt} of {before.max_attempts}; {text}"
            if isinstance(event, ExtractionTimedOut):
                text = f"timed out, detected by the {event.detected_by} ({TIMEOUT_MESSAGES[event.reason]}); {text}"
        case _:
            raise TypeError(f"unknown event {event!r}")
    waiting = after.status in ("pending", "retrying") and not after.started
    return Explanation(
        status=after.status,
        run=after.run,
        attempt=after.attempt,
        max_attempts=after.max_attempts,
        next_attempt_at=after.not_before if waiting else None,
        because=because,
        text=text,
        decision=decision,
    )


def step(before: ClipState, event: ExtractionEvent, at: datetime) -> tuple[ClipState, Explanation]:
    """`evolve`, and why."""
    after = evolve(before, event, at)
    return after, explain(before, event, after, at)
