"""Example tests of the clip aggregate: registration, worker commands, the manual retry rules of API.md."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from domain.clip import (
    Cancel,
    ClipState,
    Complete,
    Context,
    Fail,
    HandBack,
    Register,
    Retry,
    Start,
    TimeOut,
    decide,
    evolve,
)
from domain.errors import Conflict, InvalidInput, StaleAttempt
from domain.events import ExtractionCancelled, ExtractionFailed, ExtractionRequested, ExtractionTimedOut
from domain.policy import RetryPolicy, attempt_deadline_seconds

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
REGISTER = Register(source="games/match.mp4", start=300.0, end=310.0, mode="copy", name="Brilliant pass")


def ctx(seconds: float = 0.0, **kw) -> Context:
    return Context(now=T0 + timedelta(seconds=seconds), **kw)


def apply(state: ClipState, command, context: Context) -> tuple[ClipState, list]:
    events = decide(state, command, context)
    for event in events:
        state = evolve(state, event, context.now)
    return state, events


def new_clip() -> ClipState:
    return ClipState(project_id="p1", clip_id="c1")


def registered(at: float = 0.0) -> ClipState:
    return apply(new_clip(), REGISTER, ctx(at))[0]


def running(at: float = 0.0) -> ClipState:
    state = registered(at)
    return apply(state, Start(run=state.run, attempt=state.attempt, worker_id="w1"), ctx(at))[0]


def failed() -> ClipState:
    state = running()
    fail = Fail(run=1, attempt=1, code="source_missing", message="no such file", retryable=False)
    return apply(state, fail, ctx(1))[0]


def retrying() -> ClipState:
    state = running()
    return apply(state, TimeOut(run=1, attempt=1, detected_by="reaper", reason="lease"), ctx(1))[0]


# Registration -------------------------------------------------------------------------------------------------------


def test_register_requests_the_first_attempt():
    state, events = apply(new_clip(), REGISTER, ctx(jitter=0.3))
    assert len(events) == 1
    (requested,) = events
    assert isinstance(requested, ExtractionRequested)
    assert (requested.run, requested.attempt, requested.reason) == (1, 1, "registered")
    assert requested.not_before == T0
    assert (requested.source, requested.start, requested.end, requested.mode, requested.name) == (
        "games/match.mp4",
        300.0,
        310.0,
        "copy",
        "Brilliant pass",
    )
    assert state.status == "pending" and state.version == 1 and state.created_at == T0


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (10.0, 10.0),  # start == end
        (20.0, 10.0),  # start > end
        (-1.0, 5.0),  # negative start
        (0.0, 600.5),  # longer than max_clip_seconds (600)
        (float("nan"), 5.0),
        (0.0, float("inf")),
    ],
)
def test_register_rejects_bad_ranges(start, end):
    with pytest.raises(InvalidInput):
        decide(new_clip(), Register(source="a.mp4", start=start, end=end), ctx())


def test_register_accepts_the_longest_clip_and_a_clip_at_zero():
    assert decide(new_clip(), Register(source="a.mp4", start=0.0, end=600.0), ctx())
    assert decide(new_clip(), Register(source="a.mp4", start=5.0, end=9.0), ctx(max_clip_seconds=4.0))
    with pytest.raises(InvalidInput):
        decide(new_clip(), Register(source="a.mp4", start=5.0, end=9.5), ctx(max_clip_seconds=4.0))


def test_registering_again_with_the_same_fields_appends_nothing_in_any_status():
    for state in (registered(), running(), failed(), retrying()):
        assert decide(state, REGISTER, ctx(5)) == []


@pytest.mark.parametrize(
    "other",
    [
        Register(source="games/other.mp4", start=300.0, end=310.0, name="Brilliant pass"),
        Register(source="games/match.mp4", start=301.0, end=310.0, name="Brilliant pass"),
        Register(source="games/match.mp4", start=300.0, end=311.0, name="Brilliant pass"),
        Register(source="games/match.mp4", start=300.0, end=310.0, mode="accurate", name="Brilliant pass"),
        Register(source="games/match.mp4", start=300.0, end=310.0, name=None),
    ],
)
def test_registering_again_with_other_fields_is_a_conflict(other):
    with pytest.raises(Conflict):
        decide(registered(), other, ctx(5))


# Worker commands ----------------------------------------------------------------------------------------------------


def test_start_sets_the_deadline_from_the_attempt_timeout_as_its_cap():
    state = registered()  # a 10 s copy cut: its scaled deadline is longer than 20 s, shorter than 600 s
    _, (capped,) = apply(state, Start(run=1, attempt=1, worker_id="w1"), ctx(2, attempt_timeout=20))
    assert capped.deadline_at == T0 + timedelta(seconds=22)
    state, (started,) = apply(state, Start(run=1, attempt=1, worker_id="w1"), ctx(2, attempt_timeout=600))
    allowed = attempt_deadline_seconds(10.0, "copy", 600)
    assert 20 < allowed < 600 and started.deadline_at == T0 + timedelta(seconds=2 + allowed)
    assert state.status == "running" and state.worker_id == "w1" and state.started_at == T0 + timedelta(seconds=2)


def _deadline_seconds(register: Register, attempt_timeout: float) -> float:
    state = apply(new_clip(), register, ctx(0, max_clip_seconds=600))[0]
    (started,) = decide(state, Start(run=1, attempt=1, worker_id="w1"), ctx(0, attempt_timeout=attempt_timeout))
    return (started.deadline_at - T0).total_seconds()


def test_a_short_clip_gets_a_short_deadline_and_a_long_accurate_one_a_long_capped_one():
    short = _deadline_seconds(Register(source="a.mp4", start=0.0, end=2.0, mode="copy"), 600)
    short_accurate = _deadline_seconds(Register(source="a.mp4", start=0.0, end=2.0, mode="accurate"), 600)
    long_copy = _deadline_seconds(Register(source="a.mp4", start=0.0, end=600.0, mode="copy"), 600)
    long_accurate = _deadline_seconds(Register(source="a.mp4", start=0.0, end=600.0, mode="accurate"), 600)
    assert short <= 60 and short_accurate <= 60, (short, short_accurate)  # the floor for process start and probe
    assert short >= 20  # never less than a process start on a loaded machine
    assert short < short_accurate < long_accurate and short < long_copy < long_accurate
    assert long_accurate == 600  # capped by CLIPLOG_ATTEMPT_TIMEOUT
    assert _deadline_seconds(Register(source="a.mp4", start=0.0, end=600.0, mode="accurate"), 5000) > 600
    assert _deadline_seconds(Register(source="a.mp4", start=0.0, end=2.0), 3) == 3  # a smaller cap wins


def test_commands_for_an_unregistered_clip_are_stale_or_conflicts():
    with pytest.raises(StaleAttempt):
        decide(new_clip(), Start(run=0, attempt=0, worker_id="w1"), ctx())
    with pytest.raises(Conflict):
        decide(new_clip(), Retry(), ctx())


def test_a_second_start_of_the_same_attempt_is_stale():
    with pytest.raises(StaleAttempt):
        decide(running(), Start(run=1, attempt=1, worker_id="w2"), ctx(1))


def test_an_outcome_before_the_start_is_stale():
    with pytest.raises(StaleAttempt):
        decide(registered(), Complete(run=1, attempt=1, bytes=1, duration_seconds=1, elapsed_seconds=1, output="o"), ctx())


def test_a_late_result_of_a_timed_out_attempt_is_stale():
    state = retrying()
    assert (state.run, state.attempt, state.status) == (1, 2, "retrying")
    late = Complete(run=1, attempt=1, bytes=1, duration_seconds=10, elapsed_seconds=700, output="o.mp4")
    with pytest.raises(StaleAttempt):
        decide(state, late, ctx(700))
    with pytest.raises(StaleAttempt):
        decide(state, Fail(run=1, attempt=1, code="ffmpeg_exit", message="x", retryable=True), ctx(700))


def test_failures_retry_automatically_with_backoff_until_the_attempts_are_used_up():
    policy = RetryPolicy(max_attempts=3, base_seconds=10, cap_seconds=600)
    state = apply(new_clip(), REGISTER, ctx(policy=policy))[0]
    delays = []
    for attempt in (1, 2, 3):
        now = 1000.0 * attempt
        state = apply(state, Start(run=1, attempt=attempt, worker_id="w1"), ctx(now, policy=policy))[0]
        fail = Fail(run=1, attempt=attempt, code="ffmpeg_exit", message="exit 1", retryable=True)
        state, events = apply(state, fail, ctx(now + 1, policy=policy, jitter=0.0))
        if attempt < 3:
            assert state.status == "retrying" and state.attempt == attempt + 1
            delays.append((state.not_before - (T0 + timedelta(seconds=now + 1))).total_seconds())
        else:
            assert len(events) == 1 and state.status == "failed"
    assert delays == [5.0, 10.0]  # jitter 0: half of 10 * 2 ** (attempt - 1)
    assert state.last_error.code == "ffmpeg_exit" and state.retry_eligible


def test_a_non_retryable_failure_fails_the_clip_at_once():
    state = failed()
    assert state.status == "failed" and state.attempt == 1
    assert state.last_error.retryable is False
    assert state.next_retry_at is None


def test_a_timeout_reported_as_by_the_user_is_not_retried_automatically():
    state, events = apply(running(), TimeOut(run=1, attempt=1, detected_by="user", reason="user"), ctx(1))
    assert [type(e) for e in events] == [ExtractionTimedOut]
    assert state.status == "failed"


def test_a_hand_back_requests_the_next_attempt_at_once_without_using_one_up():
    policy = RetryPolicy(max_attempts=1)
    state = apply(new_clip(), REGISTER, ctx(policy=policy))[0]
    state = apply(state, Start(run=1, attempt=1, worker_id="w1"), ctx(1, policy=policy))[0]
    state, (interrupted, again) = apply(state, HandBack(run=1, attempt=1, elapsed_seconds=0.5), ctx(2, policy=policy))
    assert isinstance(interrupted, ExtractionFailed) and interrupted.retryable
    assert (again.run, again.attempt, again.reason, again.max_attempts) == (1, 2, "handed_back", 2)
    assert again.not_before == T0 + timedelta(seconds=2)
    assert state.status == "pending" and not state.started
    # the handed-back worker's result is stale; the next worker's start is not
    with pytest.raises(StaleAttempt):
        decide(state, Complete(run=1, attempt=1, bytes=1, duration_seconds=1, elapsed_seconds=1, output="o"), ctx(3))
    state = apply(state, Start(run=1, attempt=2, worker_id="w2"), ctx(3, policy=policy))[0]
    # its failure is the last attempt of the budget of one: the clip fails
    fail = Fail(run=1, attempt=2, code="ffmpeg_exit", message="exit 1", retryable=True)
    state, events = apply(state, fail, ctx(4, policy=policy))
    assert len(events) == 1 and state.status == "failed"


def test_a_hand_back_of_an_attempt_that_is_not_running_is_stale():
    with pytest.raises(StaleAttempt):
        decide(registered(), HandBack(run=1, attempt=1), ctx())


# Manual retry (API.md: retry-extraction) -----------------------------------------------------------------------------


def test_retry_of_a_failed_clip_starts_a_new_run_with_a_fresh_budget():
    state, events = apply(failed(), Retry(), ctx(10, policy=RetryPolicy(max_attempts=5)))
    (requested,) = events
    assert (requested.run, requested.attempt, requested.reason) == (2, 1, "manual_retry")
    assert requested.not_before == T0 + timedelta(seconds=10)
    assert state.status == "pending" and state.max_attempts == 5 and state.last_error is None


def test_retry_of_a_retrying_clip_runs_now_instead_of_waiting():
    state = retrying()
    assert state.next_retry_at is not None
    state, events = apply(state, Retry(), ctx(2))
    (requested,) = events
    assert (requested.run, requested.attempt, requested.reason) == (2, 1, "manual_retry")
    assert requested.not_before == T0 + timedelta(seconds=2)
    assert state.status == "pending"


def test_retry_of_a_slow_running_clip_times_it_out_as_the_user_and_starts_a_new_run():
    state = running()
    now = 301.0  # slow_after is 300
    assert state.is_slow(T0 + timedelta(seconds=now), 300)
    state, events = apply(state, Retry(), ctx(now))
    timed_out, requested = events
    assert isinstance(timed_out, ExtractionTimedOut)
    assert (timed_out.run, timed_out.attempt, timed_out.detected_by) == (1, 1, "user")
    assert timed_out.elapsed_seconds == pytest.approx(now)
    assert (requested.run, requested.attempt, requested.reason) == (2, 1, "manual_retry")
    assert state.status == "pending" and state.run == 2
    # and the first run's worker, should it finish now, is stale
    with pytest.raises(StaleAttempt):
        decide(state, Complete(run=1, attempt=1, bytes=1, duration_seconds=1, elapsed_seconds=1, output="o"), ctx(302))


def test_retry_of_a_slow_pending_clip_starts_a_new_run_without_a_timeout():
    state, events = apply(registered(), Retry(), ctx(301))
    (requested,) = events
    assert (requested.run, requested.attempt, requested.reason) == (2, 1, "manual_retry")


@pytest.mark.parametrize("make", [registered, running], ids=["pending", "running"])
def test_retry_of_a_clip_that_is_not_yet_slow_is_a_conflict(make):
    with pytest.raises(Conflict):
        decide(make(), Retry(), ctx(299))


def test_a_second_retry_click_while_the_new_run_waits_appends_nothing():
    state = apply(failed(), Retry(), ctx(10))[0]
    assert decide(state, Retry(), ctx(11)) == []
    # ... but once that run is slow, a retry starts yet another run
    (requested,) = decide(state, Retry(), ctx(10 + 301))
    assert (requested.run, requested.attempt) == (3, 1)


def test_retry_of_a_completed_clip_is_a_conflict():
    state = running()
    done = Complete(run=1, attempt=1, bytes=1000, duration_seconds=10, elapsed_seconds=0.1, output="c1.mp4")
    state = apply(state, done, ctx(1))[0]
    assert state.status == "completed" and state.output == "c1.mp4"
    with pytest.raises(Conflict):
        decide(state, Retry(), ctx(10_000))


# Cancel (API.md: cancel) ----------------------------------------------------------------------------------------------


def completed() -> ClipState:
    done = Complete(run=1, attempt=1, bytes=1000, duration_seconds=10, elapsed_seconds=0.1, output="c1.mp4")
    return apply(running(), done, ctx(1))[0]


@pytest.mark.parametrize(
    ("make", "elapsed"), [(registered, 0.0), (retrying, 0.0), (running, 7.0)], ids=["pending", "retrying", "running"]
)
def test_cancel_ends_the_current_attempt_and_nothing_automatic_resumes_it(make, elapsed):
    before = make()
    state, events = apply(before, Cancel(), ctx(7))
    assert events == [
        ExtractionCancelled(run=before.run, attempt=before.attempt, by="user", elapsed_seconds=elapsed)
    ]
    assert state.status == "cancelled" and state.retry_eligible and state.next_retry_at is None
    assert state.last_error == before.last_error  # what happened before the person stopped it stays visible
    assert not state.is_slow(T0 + timedelta(days=1), 300)
    # A worker's start, result, timeout or hand-back of the cancelled attempt is stale; a reaper's timeout too.
    run, attempt = before.run, before.attempt
    for late in (
        Start(run=run, attempt=attempt, worker_id="w9"),
        Complete(run=run, attempt=attempt, bytes=1, duration_seconds=1, elapsed_seconds=1, output="o"),
        Fail(run=run, attempt=attempt, code="ffmpeg_exit", message="x", retryable=True),
        TimeOut(run=run, attempt=attempt, detected_by="reaper", reason="lease"),
        HandBack(run=run, attempt=attempt),
    ):
        with pytest.raises(StaleAttempt):
            decide(state, late, ctx(8))
    assert decide(state, Cancel(), ctx(9)) == []  # a second cancel appends nothing
    assert decide(state, REGISTER, ctx(9)) == []
    # A person's retry starts a new run from `cancelled`.
    state, (requested,) = apply(state, Retry(), ctx(10))
    assert (requested.run, requested.attempt, requested.reason) == (before.run + 1, 1, "manual_retry")
    assert state.status == "pending"


@pytest.mark.parametrize(("make", "words"), [(completed, "already extracted"), (failed, "failed")])
def test_cancel_of_a_completed_or_failed_clip_is_a_conflict(make, words):
    with pytest.raises(Conflict, match=words):
        decide(make(), Cancel(), ctx(5))
    with pytest.raises(Conflict):
        decide(new_clip(), Cancel(), ctx())


def test_failed_and_timed_out_events_carry_the_command_and_stderr_into_the_last_error():
    command = ["ffmpeg", "-i", "https://bucket.example/k.mp4?X-Amz-Signature=REDACTED"]
    fail = Fail(run=1, attempt=1, code="ffmpeg_exit", message="exit 1", retryable=True, command=command,
                stderr_tail="line 1\nline 2")
    state, (failed_event, _) = apply(running(), fail, ctx(1))
    assert failed_event.command == command and failed_event.stderr_tail == "line 1\nline 2"
    assert state.last_error.command == command and state.last_error.stderr_tail == "line 1\nline 2"
    state = apply(state, Start(run=1, attempt=2, worker_id="w1"), ctx(30))[0]
    timeout = TimeOut(run=1, attempt=2, detected_by="worker", reason="deadline", command=command, stderr_tail="frame=1")
    state, (timed_out, _) = apply(state, timeout, ctx(31))
    assert timed_out.command == command and state.last_error.stderr_tail == "frame=1"


def test_the_hand_back_code_is_reserved_for_hand_backs() -> None:
    from domain.clip import HANDED_BACK, ClipState, Context, Fail, Register, Start, decide, evolve
    from domain.errors import InvalidInput
    from datetime import datetime, timezone

    ctx = Context(now=datetime(2026, 11, 28, tzinfo=timezone.utc))
    state = ClipState(project_id="p", clip_id="c")
    for command in (Register(source="a.mp4", start=0.0, end=1.0), Start(run=1, attempt=1, worker_id="w")):
        for event in decide(state, command, ctx):
            state = evolve(state, event, ctx.now)
    with pytest.raises(InvalidInput):
        decide(state, Fail(run=1, attempt=1, code=HANDED_BACK, message="x", retryable=True), ctx)


def test_backoff_does_not_overflow_for_absurd_attempt_numbers() -> None:
    from domain.policy import RetryPolicy, backoff_seconds

    assert backoff_seconds(RetryPolicy(cap_seconds=600.0), 5000, 1.0) == 600.0
