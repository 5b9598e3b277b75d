"""The reasons the replay and history tools print: the retry rule's own `Decision`, for each way an attempt can end,
taken from real histories built by `decide` and folded by `evolve` (domain.story)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from domain.clip import Cancel, ClipState, Complete, Context, Fail, HandBack, Register, Retry, Start, TimeOut, decide
from domain.policy import RetryPolicy
from domain.reasons import HANDED_BACK, Decision, after_outcome
from domain.story import Explanation, step

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
REGISTER = Register(source="games/match.mp4", start=300.0, end=310.0)


class Clip:
    """A clip driven through `decide`, each event folded by `domain.story.step`, keeping every explanation."""

    def __init__(self, **context: object) -> None:
        self.state = ClipState(project_id="p1", clip_id="c1")
        self.seconds = 0.0
        self.context = context
        self.told: list[Explanation] = []

    def run(self, command: object, after: float = 1.0) -> list[Explanation]:
        self.seconds += after
        ctx = Context(now=T0 + timedelta(seconds=self.seconds), jitter=0.0, **self.context)  # type: ignore[arg-type]
        told = []
        for event in decide(self.state, command, ctx):  # type: ignore[arg-type]
            self.state, explanation = step(self.state, event, ctx.now)
            told.append(explanation)
        self.told.extend(told)
        return told

    def start(self) -> list[Explanation]:
        return self.run(Start(run=self.state.run, attempt=self.state.attempt, worker_id="w1"))

    def fail(self, code: str = "ffmpeg_exit", retryable: bool = True) -> list[Explanation]:
        return self.run(Fail(run=self.state.run, attempt=self.state.attempt, code=code, message="x", retryable=retryable))


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        (dict(code=HANDED_BACK, retryable=True, attempt=3, max_attempts=3), "handed_back"),
        (dict(code="timed_out", retryable=True, stopped_by_person=True, attempt=1, max_attempts=3), "stopped_by_person"),
        (dict(code="source_missing", retryable=False, attempt=1, max_attempts=3), "not_retryable"),
        (dict(code="ffmpeg_exit", retryable=True, attempt=3, max_attempts=3), "budget_used_up"),
        (dict(code="ffmpeg_exit", retryable=True, attempt=2, max_attempts=3), "retryable"),
    ],
)
def test_the_rule_in_its_order(kwargs: dict, why: str) -> None:
    decision = after_outcome(**kwargs)
    assert decision.why == why
    assert decision.auto_retry is (why == "retryable")
    assert decision.retry_eligible is (why in ("retryable", "handed_back"))


def test_a_retryable_failure_is_retried_after_a_backoff_and_says_until_when() -> None:
    clip = Clip(policy=RetryPolicy(max_attempts=3, base_seconds=10.0))
    clip.run(REGISTER, after=0)
    assert clip.told[-1].because == "registered" and clip.told[-1].next_attempt_at == T0
    clip.start()
    failed, requested = clip.fail()
    assert failed.decision == Decision(why="retryable", attempt=1, max_attempts=3, code="ffmpeg_exit")
    assert failed.status == "retrying" and "attempt 2 follows after a backoff" in failed.text
    # jitter 0: half of base * 2**0 = 5 s after the failure at T0+2
    assert requested.because == "backoff" and requested.next_attempt_at == T0 + timedelta(seconds=7)
    assert "attempt 2 of 3 waits until 2026-11-28T12:00:07.000+00:00 (5.0 s)" in requested.text
    assert requested.position_line == "retrying, attempt 2 of 3, next attempt at 2026-11-28T12:00:07.000+00:00"


def test_the_budget_used_up() -> None:
    clip = Clip(policy=RetryPolicy(max_attempts=2))
    clip.run(REGISTER, after=0)
    clip.start(), clip.fail()
    clip.run(Start(run=1, attempt=2, worker_id="w1"), after=60)
    (last,) = clip.fail()
    assert last.decision is not None and last.decision.why == "budget_used_up"
    assert last.status == "failed" and last.next_attempt_at is None
    assert "the budget is used up (attempt 2 of 2 was the last automatic attempt)" in last.text


def test_an_error_no_retry_can_fix() -> None:
    clip = Clip()
    clip.run(REGISTER, after=0)
    clip.start()
    (last,) = clip.fail("source_missing", retryable=False)
    assert last.decision is not None and last.decision.why == "not_retryable" and last.status == "failed"
    assert "source_missing is an error no retry can fix" in last.text


def test_a_person_stopped_a_slow_attempt() -> None:
    clip = Clip(slow_after=30.0)
    clip.run(REGISTER, after=0)
    clip.start()
    timed_out, requested = clip.run(Retry(), after=31)
    assert timed_out.decision is not None and timed_out.decision.why == "stopped_by_person"
    assert timed_out.status == "failed" and "detected by the user" in timed_out.text
    assert "a person stopped it" in timed_out.text
    assert requested.because == "manual_retry" and requested.run == 2 and "new run (2)" in requested.text


def test_a_timeout_found_by_the_reaper_is_retried() -> None:
    clip = Clip()
    clip.run(REGISTER, after=0)
    clip.start()
    timed_out, requested = clip.run(TimeOut(run=1, attempt=1, detected_by="reaper", reason="lease"))
    assert timed_out.because == "retryable" and "detected by the reaper" in timed_out.text
    assert requested.because == "backoff"


def test_a_hand_back_by_a_deploy() -> None:
    clip = Clip(policy=RetryPolicy(max_attempts=1))
    clip.run(REGISTER, after=0)
    clip.start()
    failed, requested = clip.run(HandBack(run=1, attempt=1))
    assert failed.decision is not None and failed.decision.why == "handed_back" and failed.status == "pending"
    assert "handed back by a deploy" in failed.text
    assert requested.because == "handed_back" and (requested.attempt, requested.max_attempts) == (2, 2)
    assert requested.next_attempt_at == T0 + timedelta(seconds=2)


def test_a_completion() -> None:
    clip = Clip()
    clip.run(REGISTER, after=0)
    clip.start()
    (done,) = clip.run(Complete(run=1, attempt=1, bytes=10, duration_seconds=10.0, elapsed_seconds=0.5, output="o"))
    assert done.because == "completed" and done.decision is None and done.status == "completed"


def test_a_person_cancelled_it() -> None:
    clip = Clip()
    clip.run(REGISTER, after=0)
    clip.start()
    (cancelled,) = clip.run(Cancel())
    assert cancelled.decision == Decision(why="stopped_by_person", attempt=1, max_attempts=3, code="cancelled")
    assert cancelled.status == "cancelled" and cancelled.next_attempt_at is None
    assert "cancelled by the user at attempt 1 of 3" in cancelled.text and "a person stopped it" in cancelled.text
    (again,) = clip.run(Retry())
    assert again.because == "manual_retry" and again.run == 2
