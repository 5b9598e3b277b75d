"""The replay tool: folding the log reproduces every recorded status, and a tampered status is flagged."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from domain.clip import Context, Fail, Register, Start
from usecases.clips import handle
from projections.replay import describe, read_all, replay

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


async def test_replay_reproduces_the_recorded_statuses_and_flags_a_tampered_one(pool, ids) -> None:
    project, clip = ids.project(), ids.clip()
    now = [T0]
    ctx = lambda: Context(now=now[0], jitter=0.25)  # noqa: E731
    await handle(pool, project, clip, Register(source="games/match.mp4", start=1.0, end=3.0), ctx)
    now[0] += timedelta(seconds=1)
    await handle(pool, project, clip, Start(run=1, attempt=1, worker_id="w1"), ctx)
    await handle(pool, project, clip, Fail(run=1, attempt=1, code="ffmpeg_exit", message="boom", retryable=True), ctx)

    steps = list(replay([e async for e in read_all(pool, [project])]))
    assert [s.state.status for s in steps] == ["pending", "running", "retrying", "retrying"]
    assert all(s.mismatch is None for s in steps)
    lines = [describe(s) for s in steps]
    assert "ffmpeg_exit: boom (retryable)" in lines[2] and "auto_retry" in lines[3]
    assert [s.state.status for s in replay([e async for e in read_all(pool, [project], clip)])] == [
        "pending", "running", "retrying", "retrying"
    ]

    await pool.execute("UPDATE events SET clip_status = 'completed' WHERE project_id = $1 AND version = 2", project)
    steps = list(replay([e async for e in read_all(pool, [project])]))
    assert [s.mismatch for s in steps] == [None, "completed", None, None]
    assert "!! recorded as completed" in describe(steps[1])
