"""Property tests of the clip aggregate: random command sequences through `decide` then `evolve`.

Each generated step advances the clock, draws a jitter and a retry policy, and sends one command. Worker commands
(Start, Complete, Fail, TimeOut, HandBack) aim at the clip's current attempt, at the previous one (a late worker) or
at a random (run, attempt) (a confused one). Domain errors (CliplogError) are expected answers; anything else fails.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.clip import (
    CANCELLABLE,
    HANDED_BACK,
    Cancel,
    ClipState,
    Complete,
    Context,
    Fail,
    HandBack,
    Register,
    Retry,
    Start,
    Status,
    TimeOut,
    decide,
    evolve,
    fold,
)
from domain.errors import CliplogError
from domain.events import (
    ENDINGS,
    OUTCOMES,
    ExtractionCancelled,
    ExtractionEvent,
    ExtractionFailed,
    ExtractionRequested,
    ExtractionStarted,
    ExtractionTimedOut,
)
from domain.policy import RetryPolicy

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
STATUSES = set(get_args(Status))
VALID_REGISTER = Register(source="games/match.mp4", start=300.0, end=310.0)


# Strategies -------------------------------------------------------------------------------------------------------

registers = st.builds(
    Register,
    source=st.sampled_from(["games/match.mp4", "games/other.mp4"]),
    start=st.sampled_from([-1.0, 0.0, 300.0, 310.0]),
    end=st.sampled_from([0.0, 310.0, 900.0, 2000.0]),
    mode=st.sampled_from(["copy", "accurate"]),
    name=st.sampled_from([None, "Brilliant pass"]),
)

# Which attempt a worker command names: mostly the current one, so that runs get far.
targets = st.one_of(
    *[st.just("current")] * 6,
    st.just("previous"),
    st.tuples(st.integers(0, 4), st.integers(0, 4)),
)
worker_commands = [
    st.tuples(st.just("start"), targets, st.sampled_from(["w1", "w2"])),
    st.tuples(st.just("complete"), targets),
    st.tuples(st.just("fail"), targets, st.booleans()),
    st.tuples(st.just("timeout"), targets, st.sampled_from(["worker", "reaper", "user"])),
    st.tuples(st.just("handback"), targets),
]
commands = st.one_of(
    registers,
    st.just(VALID_REGISTER),
    *worker_commands,
    *[st.tuples(st.just("start"), st.just("current"), st.just("w1"))] * 2,  # starts make everything else possible
    st.tuples(st.just("fail"), st.just("current"), st.just(True)),
    st.tuples(st.just("timeout"), st.just("current"), st.sampled_from(["worker", "reaper"])),
    st.just(Retry()),
    st.just(Cancel()),
)


@dataclass(frozen=True)
class Step:
    advance: float  # seconds the clock moves before the command
    jitter: float
    max_attempts: int
    command: object


steps = st.builds(
    Step,
    advance=st.one_of(st.just(0.0), st.floats(0, 1000, allow_nan=False)),
    jitter=st.floats(0, 1, exclude_max=True),
    max_attempts=st.integers(1, 4),
    command=commands,
)

# (register first?, steps): mostly registered first, and long enough to use up attempts and runs.
histories = st.tuples(
    st.sampled_from([True] * 9 + [False]),
    st.integers(0, 40).flatmap(lambda n: st.lists(steps, min_size=n, max_size=n)),
)


# Interpreting a step ------------------------------------------------------------------------------------------------


def _target(state: ClipState, target, previous: tuple[int, int]) -> tuple[int, int]:
    if target == "current":
        return state.run, state.attempt
    if target == "previous":
        return previous
    return target


def _command(state: ClipState, spec, previous: tuple[int, int]):
    if not isinstance(spec, tuple):
        return spec
    kind, target, *rest = spec
    run, attempt = _target(state, target, previous)
    match kind:
        case "start":
            return Start(run=run, attempt=attempt, worker_id=rest[0])
        case "complete":
            return Complete(
                run=run, attempt=attempt, bytes=1000, duration_seconds=10.0, elapsed_seconds=0.1, output="c.mp4"
            )
        case "fail":
            code = "ffmpeg_exit" if rest[0] else "source_missing"
            return Fail(run=run, attempt=attempt, code=code, message="boom", retryable=rest[0])
        case "timeout":
            reason = {"worker": "deadline", "reaper": "lease", "user": "user"}[rest[0]]
            return TimeOut(run=run, attempt=attempt, detected_by=rest[0], reason=reason)
        case "handback":
            return HandBack(run=run, attempt=attempt)
    raise AssertionError(spec)


@dataclass
class Run:
    state: ClipState
    history: list[tuple[ExtractionEvent, datetime]]
    decisions: list[list[tuple[ExtractionEvent, ClipState]]]  # each decision: (event, state right after it)


def run_history(register_first: bool, generated: list[Step]) -> Run:
    state = ClipState(project_id="p1", clip_id="c1")
    history: list[tuple[ExtractionEvent, datetime]] = []
    decisions: list[list[tuple[ExtractionEvent, ClipState]]] = []
    now = T0
    previous = (0, 0)
    first = [Step(0.0, 0.5, 3, VALID_REGISTER)] if register_first else []
    for step in first + generated:
        now += timedelta(seconds=step.advance)
        ctx = Context(now=now, jitter=step.jitter, policy=RetryPolicy(max_attempts=step.max_attempts))
        command = _command(state, step.command, previous)
        try:
            events = decide(state, command, ctx)
        except CliplogError:
            continue
        decision = []
        for event in events:
            if isinstance(event, ExtractionRequested):
                previous = (state.run, state.attempt)
            state = evolve(state, event, now)
            history.append((event, now))
            decision.append((event, state))
            check_state(state, len(history))
        check_final_state(state, len(history))
        decisions.append(decision)
    return Run(state, history, decisions)


def check_state(state: ClipState, n_events: int) -> None:
    assert state.status in STATUSES
    assert state.version == n_events
    assert state.registered == (n_events > 0)
    if state.registered:
        assert state.status != "unregistered"
        assert state.run >= 1
        assert 1 <= state.attempt <= state.max_attempts
        assert state.created_at is not None and state.status_since is not None
    else:
        assert state.status == "unregistered"
    if state.status in ("running", "completed"):
        assert state.started
    if state.status == "running":
        assert state.deadline_at is not None and state.worker_id is not None
    if state.status in ("retrying", "failed"):
        assert state.last_error is not None
    if state.status == "completed":
        assert state.output is not None and state.last_error is None


def check_final_state(state: ClipState, n_events: int) -> None:
    """What holds once a whole decision is applied (the state `handle` stores)."""
    check_state(state, n_events)
    if state.status == "pending":
        assert not state.started
    if state.status == "retrying":
        assert not state.started
        assert state.request_reason == "auto_retry"
        assert state.next_retry_at == state.not_before is not None


# Properties ----------------------------------------------------------------------------------------------------------
# Each check takes one generated Run. They all run on every example of one @given test (generating a history costs
# more than checking it), and each is also a plain function for the regression examples further down.


def check_valid_final_state(run: Run) -> None:
    check_final_state(run.state, len(run.history))


def check_attempts_requested_once_started_at_most_once_and_ended_at_most_once(run: Run) -> None:
    requested: Counter[tuple[int, int]] = Counter()
    started: Counter[tuple[int, int]] = Counter()
    outcomes: Counter[tuple[int, int]] = Counter()  # completed, failed, timed_out
    cancelled: Counter[tuple[int, int]] = Counter()
    current: tuple[int, int] | None = None
    for event, _ in run.history:
        key = (event.run, event.attempt)
        if isinstance(event, ExtractionRequested):
            requested[key] += 1
            if current is not None:
                same_run = event.reason in ("auto_retry", "handed_back")
                expected = (current[0], current[1] + 1) if same_run else (current[0] + 1, 1)
                assert key == expected, (event.reason, current, key)
            current = key
            continue
        assert key == current, "every other event is about the attempt requested last"
        assert outcomes[key] + cancelled[key] == 0, "nothing about an attempt after it ended"
        if isinstance(event, ExtractionStarted):
            started[key] += 1
        elif isinstance(event, ExtractionCancelled):
            cancelled[key] += 1  # a cancel ends an attempt whether it started or not
        else:
            assert isinstance(event, OUTCOMES)
            assert started[key] == 1, "an outcome only for a started attempt"
            outcomes[key] += 1
    assert all(n == 1 for n in requested.values()), requested
    assert all(n <= 1 for n in started.values()), started
    assert all(n <= 1 for n in outcomes.values()), outcomes
    assert all(n <= 1 for n in cancelled.values()), cancelled
    # An attempt that was superseded had ended, or never started (a manual retry of a slow pending clip).
    for key in requested:
        if key != current:
            assert outcomes[key] + cancelled[key] >= started[key], key


def check_fold_equals_event_by_event(run: Run) -> None:
    initial = ClipState(project_id="p1", clip_id="c1")
    assert fold(initial, run.history) == run.state
    flat = [state for decision in run.decisions for _, state in decision]
    for i, state in enumerate(flat):
        assert fold(initial, run.history[: i + 1]) == state


def check_retrying_iff_auto_retry_follows(run: Run) -> None:
    """Right after failed/timed_out the status (which is what the event records as clip_status) is `retrying`
    exactly when the same decision goes on with an automatic retry's `requested`."""
    for decision in run.decisions:
        for i, (event, state) in enumerate(decision):
            if not isinstance(event, (ExtractionFailed, ExtractionTimedOut)):
                continue
            following = decision[i + 1][0] if i + 1 < len(decision) else None
            auto = isinstance(following, ExtractionRequested) and following.reason == "auto_retry"
            assert (state.status == "retrying") == auto, (event, state.status, following)
            if auto:
                assert following.not_before >= state.updated_at
                assert following.max_attempts == state.max_attempts
            if isinstance(event, ExtractionTimedOut) and event.detected_by == "user":
                assert state.status == "failed"
                assert following is None or following.reason == "manual_retry"
            if isinstance(event, ExtractionFailed) and event.code == HANDED_BACK:
                # handing back uses up no attempt: the next one is requested at once, with one more allowed
                assert state.status == "pending"
                assert isinstance(following, ExtractionRequested) and following.reason == "handed_back"
                assert following.not_before == state.updated_at
                assert following.max_attempts == state.max_attempts + 1


def check_second_click_and_same_registration_append_nothing(run: Run) -> None:
    state = run.state
    ctx = Context(now=(run.history[-1][1] if run.history else T0) + timedelta(seconds=1))
    if state.status == "pending" and state.request_reason == "manual_retry" and state.attempt == 1:
        assert decide(state, Retry(), ctx) == []
    if state.registered:
        same = Register(source=state.source, start=state.start, end=state.end, mode=state.mode, name=state.name)
        assert decide(state, same, ctx) == []


def check_cancelled_is_left_only_by_a_persons_retry(run: Run) -> None:
    """DESIGN.md invariant 11: after `cancelled` the next event (if any) is a person's retry, whatever the automatic
    machinery (worker results, timeouts, hand-backs, the reaper) sent meanwhile; a cancel lands only on an attempt
    that was pending, retrying or running, and a second cancel appends nothing."""
    events = [event for event, _ in run.history]
    states = [state for decision in run.decisions for _, state in decision]
    for i, event in enumerate(events):
        if not isinstance(event, ExtractionCancelled):
            continue
        before = states[i - 1] if i > 0 else None
        assert before is not None and before.status in CANCELLABLE, before
        assert (event.run, event.attempt) == (before.run, before.attempt) and event.by == "user"
        assert states[i].status == "cancelled"
        if i + 1 < len(events):
            following = events[i + 1]
            assert isinstance(following, ExtractionRequested) and following.reason == "manual_retry", following
            assert (following.run, following.attempt) == (event.run + 1, 1)
    if run.state.status == "cancelled":
        ctx = Context(now=(run.history[-1][1] if run.history else T0) + timedelta(seconds=1))
        assert decide(run.state, Cancel(), ctx) == []


CHECKS = [
    check_valid_final_state,
    check_attempts_requested_once_started_at_most_once_and_ended_at_most_once,
    check_fold_equals_event_by_event,
    check_retrying_iff_auto_retry_follows,
    check_second_click_and_same_registration_append_nothing,
    check_cancelled_is_left_only_by_a_persons_retry,
]


@settings(max_examples=500)
@given(histories)
def test_random_command_sequences_keep_every_invariant(h):
    run = run_history(*h)
    for check in CHECKS:
        check(run)


def _steps(*commands) -> list[Step]:
    return [Step(0.0, 0.5, 3, c) for c in commands]


@pytest.mark.parametrize(
    "generated",
    [
        # A TimeOut command that says the user stopped the attempt: no automatic retry may follow, since evolve
        # records the attempt as failed (found by the property test above; decide used to schedule one).
        _steps(("start", "current", "w1"), ("timeout", "current", "user")),
        # A late worker of a timed-out attempt, then a manual retry of the failed clip and a double click.
        _steps(
            ("start", "current", "w1"),
            ("timeout", "current", "reaper"),
            ("complete", "previous"),
            ("start", "current", "w2"),
            ("fail", "current", False),
            ("start", "previous", "w1"),
            Retry(),
            Retry(),
        ),
        # A cancelled running attempt whose worker reports late, the reaper's timeout, a double cancel, a retry.
        _steps(
            ("start", "current", "w1"),
            Cancel(),
            ("complete", "current"),
            ("timeout", "current", "reaper"),
            ("handback", "current"),
            ("start", "current", "w2"),
            Cancel(),
            Retry(),
            Cancel(),
        ),
    ],
    ids=["user-timeout-command", "late-worker-then-manual-retry", "cancel-running-then-late-worker-then-retry"],
)
def test_regression_histories(generated):
    run = run_history(True, generated)
    for check in CHECKS:
        check(run)


def test_the_generator_reaches_every_status_and_event_kind():
    """A guard on the strategies above: a generator that never gets far would make the properties vacuous."""
    seen: set[object] = set()

    @settings(max_examples=300)
    @given(histories)
    def collect(h):
        run = run_history(*h)
        for decision in run.decisions:
            for event, state in decision:
                seen.add(state.status)
                seen.add(type(event).__name__)
                if isinstance(event, ExtractionRequested):
                    seen.add(event.reason)
                if isinstance(event, ExtractionTimedOut):
                    seen.add(event.detected_by)

    collect()
    wanted = STATUSES - {"unregistered"}
    wanted |= {"registered", "auto_retry", "manual_retry", "handed_back", "worker", "reaper", "user"}
    wanted |= {t.__name__ for t in (ExtractionRequested, ExtractionStarted, *ENDINGS)}
    assert wanted <= seen, wanted - seen
