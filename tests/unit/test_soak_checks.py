"""The soak's checks (soak/checks.py) on constructed data: each passes on a sound history and reports the fault it
exists for, so a passing soak means the system held, not that the checks cannot fail."""

from __future__ import annotations

import random

import msgspec

from soak import checks
from soak.checks import Bound, FinalClip, LoggedEvent, OutputFacts
from soak.workload import BEHAVIOURS, ffmpeg_wrapper, plan_clips


def history(project: str = "p1", clip: str = "c1", *, start: float = 100.0, position: int = 1) -> list[LoggedEvent]:
    """A clip whose first attempt crashed, whose second was lost with its worker, and whose third completed."""
    steps = [
        ("requested", 1, "pending"), ("started", 1, "running"), ("failed", 1, "retrying"),
        ("requested", 2, "retrying"), ("started", 2, "running"), ("timed_out", 2, "retrying"),
        ("requested", 3, "retrying"), ("started", 3, "running"), ("completed", 3, "completed"),
    ]  # fmt: skip
    return [
        LoggedEvent(position=position + i, project_id=project, clip_id=clip, version=i + 1, type=f"extraction.{kind}",
                    run=1, attempt=attempt, clip_status=status, recorded_at=start + i,
                    detected_by="reaper" if kind == "timed_out" else None)
        for i, (kind, attempt, status) in enumerate(steps)
    ]  # fmt: skip


def test_a_sound_history_passes_every_log_check():
    events = history() + history("p2", "c9", position=100)
    assert checks.check_versions(events) == []
    assert checks.check_attempts(events) == []


def test_a_duplicate_started_and_a_second_outcome_are_reported():
    events = history()
    duplicate = msgspec.structs.replace(events[7], position=50, version=10)
    second_outcome = msgspec.structs.replace(events[8], position=51, version=11, type="extraction.failed")
    problems = checks.check_attempts([*events, duplicate, second_outcome])
    assert any("more than one `started`" in p and "attempt 1.3" in p for p in problems), problems
    assert any("more than one outcome" in p for p in problems), problems


def test_an_attempt_without_its_requested_or_an_outcome_without_started_is_reported():
    events = history()
    assert checks.check_attempts(events[1:]) != []  # attempt 1.1 has no `requested`
    no_start = [e for e in events if not (e.type == "extraction.started" and e.attempt == 3)]
    assert any("without a `started`" in p for p in checks.check_attempts(no_start))
    unfinished = events[:-1]  # attempt 1.3 started, no outcome
    assert any("started but has no outcome" in p for p in checks.check_attempts(unfinished))


def test_a_gap_or_a_repeat_in_a_streams_versions_is_reported():
    events = history()
    skipped = [e if e.position < 5 else msgspec.structs.replace(e, version=e.version + 1) for e in events]
    assert checks.check_versions(skipped) == ["p1/c1: versions [1, 2, 3, 4, 6, 7, 8, 9, 10] in position order"]
    assert checks.check_versions([*events, msgspec.structs.replace(events[2], position=99)]) != []


def test_a_stuck_clip_and_a_failure_that_had_attempts_left_are_reported():
    clips = [
        FinalClip(project_id="p", clip_id="done", status="completed", attempt=1, max_attempts=3),
        FinalClip(project_id="p", clip_id="gave-up", status="failed", attempt=3, max_attempts=3, error_code="timed_out",
                  error_retryable=True),
        FinalClip(project_id="p", clip_id="bad", status="failed", attempt=1, max_attempts=3, error_code="not_a_video",
                  error_retryable=False),
        FinalClip(project_id="p", clip_id="stopped", status="cancelled", attempt=1, max_attempts=3),
    ]  # fmt: skip
    assert checks.check_final_states(clips) == []
    stuck = FinalClip(project_id="p", clip_id="stuck", status="running", attempt=2, max_attempts=3)
    early = FinalClip(project_id="p", clip_id="early", status="failed", attempt=1, max_attempts=3,
                      error_code="ffmpeg_exit", error_retryable=True)  # fmt: skip
    problems = checks.check_final_states([*clips, stuck, early])
    assert problems == [
        "p/stuck is still running (attempt 2): stuck",
        "p/early failed with a retryable error (ffmpeg_exit) after 1 of 3 attempts",
    ]


def test_a_lost_and_an_unexpected_clip_are_reported():
    assert checks.check_registered([("p", "a")], [("p", "a")], [("p", "a")]) == []
    problems = checks.check_registered([("p", "a"), ("p", "lost")], [("p", "a"), ("p", "ghost")], [("p", "a")])
    assert problems == [
        "p/lost was accepted but is not in the log",
        "p/ghost is in the log but was never accepted",
        "p/ghost is in the log but has no clip row",
    ]


def test_a_feed_with_a_duplicate_a_gap_another_users_event_or_a_reordering_fails():
    log = history()
    assert checks.check_feed("alice/ws", log, log) == []
    assert "more than once" in checks.check_feed("alice/ws", [*log[:5], log[4], *log[5:]], log)[0]
    assert "missed 1 of 9" in checks.check_feed("alice/poll", log[:3] + log[4:], log)[0]
    foreign = history("theirs", "x", position=500)[:1]
    assert "not of its user" in checks.check_feed("alice/ws", [*log, *foreign], log)[0]
    swapped = [*log[:2], log[3], log[2], *log[4:]]
    assert any("out of position order" in p for p in checks.check_feed("alice/ws", swapped, log))
    altered = [*log[:-1], msgspec.structs.replace(log[-1], clip_status="failed")]
    assert checks.check_feed("alice/ws", altered, log) == ["alice/ws: events differ from the log at positions [9]"]


def test_outputs_missing_truncated_resized_or_of_the_wrong_length_are_reported():
    good = OutputFacts(key=("p", "c"), path="p/c.r1a1.mp4", expected_min=2.5, expected_max=4.5, recorded_bytes=1000,
                       exists=True, size=1000, whole=True, duration=3.0)  # fmt: skip
    assert checks.check_outputs([good]) == []
    cases = {
        "does not exist": msgspec.structs.replace(good, exists=False),
        "not a whole MP4": msgspec.structs.replace(good, whole=False),
        "bytes on disk": msgspec.structs.replace(good, size=999),
        "lasts 9.0 s": msgspec.structs.replace(good, duration=9.0),
    }
    for words, facts in cases.items():
        assert words in checks.check_outputs([facts])[0]


def test_temporaries_are_allowed_only_for_a_lost_worker_and_orphans_never():
    events = history()  # attempt 1.2 was timed out by the reaper: its worker was lost
    files = ["p1/c1.r1a3.mp4", "p1/.tmp-c1.r1a2.0badf00d.mp4"]
    assert checks.check_leftover_files(files, ["p1/c1.r1a3.mp4"], events) == ([], ["p1/.tmp-c1.r1a2.0badf00d.mp4"])
    problems, awaiting = checks.check_leftover_files(
        [*files, "p1/.tmp-c1.r1a1.12345678.mp4", "p1/c1.r1a1.mp4"], ["p1/c1.r1a3.mp4"], events
    )
    assert awaiting == ["p1/.tmp-c1.r1a2.0badf00d.mp4"]
    assert problems == [
        "p1/.tmp-c1.r1a1.12345678.mp4: a temporary file left by an attempt whose worker was not lost",
        "p1/c1.r1a1.mp4: an orphan output (no completed clip points at it)",
    ]


def test_stuck_time_is_the_longest_gap_of_a_waiting_state_until_the_next_event_or_the_settle():
    events = history(start=0.0)
    slow_start = [e if e.position < 2 else msgspec.structs.replace(e, recorded_at=e.recorded_at + 20) for e in events]
    gaps = checks.longest_gaps(slow_start, settled_at=100.0)
    assert gaps["pending"].seconds == 21.0 and gaps["pending"].key == ("p1", "c1")
    assert gaps["running"].seconds == 1.0 and "completed" not in gaps
    never_ended = checks.longest_gaps(events[:5], settled_at=60.0)  # still running at the settle
    assert never_ended["running"].seconds == 60.0 - 4.0
    bounds = {"running": Bound(7.5, "deadline"), "pending": Bound(3.5, "requeue", enforced=False)}
    assert checks.check_gaps(gaps, bounds, slack=5.0) == []
    problems = checks.check_gaps(never_ended, bounds, slack=5.0)
    assert len(problems) == 1 and "running for 56.0 s" in problems[0]


def test_the_plan_is_seeded_and_the_wrapper_has_a_branch_per_behaviour_that_needs_one():
    one, two = (plan_clips(random.Random(7), 50, 30.0, BEHAVIOURS) for _ in range(2))
    assert one == two and len({c.clip_id for c in one}) == 50
    assert all(0 <= c.body["start"] < c.body["end"] for c in one)
    script = ffmpeg_wrapper(BEHAVIOURS)
    wrapped = {b.folder for b in BEHAVIOURS if b.wrapper}
    for behaviour in BEHAVIOURS:
        assert script.count(f"*/{behaviour.folder}/*)") == (behaviour.folder in wrapped)


def test_feed_delays_are_measured_from_commit_and_split_by_window():
    recorded = {1: 10.0, 2: 20.0, 3: 21.0}
    every, held = checks.feed_delays([(1, 10.5), (2, 24.0), (3, 21.1), (9, 30.0)], recorded, [(19.5, 22.0)])
    assert [round(d, 3) for d in every] == [0.1, 0.5, 4.0]
    assert [round(d, 3) for d in held] == [0.1, 4.0]


def test_the_most_attempts_running_at_once_per_group():
    one = history("p1", "a", position=1)  # attempts of one clip never overlap
    two = history("p1", "b", position=2)[:2]  # started at position 3, never ended
    other = history("p2", "c", position=100)
    assert checks.most_running_at_once(one, lambda e: e.project_id) == {"p1": 1}
    assert checks.most_running_at_once(one + two + other, lambda e: e.project_id) == {"p1": 2, "p2": 1}
    assert checks.most_running_at_once(one + two + other, lambda e: "all") == {"all": 2}
