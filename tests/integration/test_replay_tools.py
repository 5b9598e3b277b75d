"""The debugging tools on real histories in a real log: `cliplog export` / `import` / `replay` / `history` as the
commands a person runs (subprocesses), against the live projection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import msgspec
import pytest

from domain.clip import Cancel, Complete, Context, Fail, HandBack, Register, Retry, Start, TimeOut
from domain.policy import RetryPolicy
from eventlog import export
from projections.clip_status import state_from_json
from projections.replay import replay
from usecases.clips import handle, register

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
CLIPLOG = [sys.executable, "-m", "api.cli"]
ROOT = Path(__file__).resolve().parents[2]
# (clip, the reasons its history must print, in order)
EXPECTED_BECAUSE = {
    "retried-then-done": ["registered", "running", "retryable", "backoff", "running", "completed"],
    "budget": ["registered", "running", "retryable", "backoff", "running", "budget_used_up"],
    "unfixable": ["registered", "running", "not_retryable"],
    "stopped": ["registered", "running", "stopped_by_person", "manual_retry"],
    "handed-back": ["registered", "running", "handed_back", "handed_back", "running", "completed"],
    "reaped": ["registered", "running", "retryable", "backoff"],
    "cancelled": ["registered", "running", "stopped_by_person"],
}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def context(self, **kw: object):  # noqa: ANN201
        return lambda: Context(now=self.now, jitter=0.5, policy=RetryPolicy(max_attempts=2), slow_after=30.0, **kw)

    def tick(self, seconds: float = 1.0) -> None:
        self.now += timedelta(seconds=seconds)


async def make_histories(pool: asyncpg.Pool, project: str, user: str = "alice") -> None:
    """One clip per way a clip's story can go (EXPECTED_BECAUSE), through the service's own use cases."""
    clock = Clock()
    ctx = clock.context()
    reg = Register(source="games/match.mp4", start=1.0, end=3.0)
    for clip in EXPECTED_BECAUSE:
        await register(pool, project, clip, reg, ctx, user=user)
        clock.tick()
        await handle(pool, project, clip, Start(run=1, attempt=1, worker_id="w1"), ctx)
        clock.tick()
    done = Complete(run=1, attempt=2, bytes=100, duration_seconds=2.0, elapsed_seconds=0.1, output="o.mp4")
    boom = "ffmpeg exited with code 1:\nInvalid data found when processing input"
    await handle(pool, project, "retried-then-done", Fail(run=1, attempt=1, code="ffmpeg_exit", message=boom,
                                                          retryable=True), ctx)  # fmt: skip
    await handle(pool, project, "budget", Fail(run=1, attempt=1, code="ffmpeg_exit", message=boom, retryable=True), ctx)
    await handle(pool, project, "unfixable", Fail(run=1, attempt=1, code="source_missing", message="gone",
                                                  retryable=False), ctx)  # fmt: skip
    await handle(pool, project, "handed-back", HandBack(run=1, attempt=1), ctx)
    await handle(pool, project, "reaped", TimeOut(run=1, attempt=1, detected_by="reaper", reason="lease"), ctx)
    await handle(pool, project, "cancelled", Cancel(), ctx)
    clock.tick(60)
    await handle(pool, project, "stopped", Retry(), ctx)
    for clip in ("retried-then-done", "budget", "handed-back"):
        await handle(pool, project, clip, Start(run=1, attempt=2, worker_id="w2"), ctx)
    clock.tick()
    await handle(pool, project, "retried-then-done", done, ctx)
    await handle(pool, project, "handed-back", done, ctx)
    await handle(pool, project, "budget", Fail(run=1, attempt=2, code="ffmpeg_exit", message=boom, retryable=True), ctx)


def cliplog(*args: str, database_url: str | None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPLOG_")}
    # No database: a URL nothing answers on, so a command that tried to use it would fail.
    env["CLIPLOG_DATABASE_URL"] = database_url or "postgresql://nobody@127.0.0.1:9/none"
    done = subprocess.run([*CLIPLOG, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"cliplog {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


async def live_states(pool: asyncpg.Pool, project: str) -> dict[str, object]:
    rows = await pool.fetch("SELECT clip_id, state FROM clips WHERE project_id = $1", project)
    return {r["clip_id"]: state_from_json(r["state"]) for r in rows}


@pytest.fixture
async def histories(pool: asyncpg.Pool, ids) -> str:  # noqa: ANN001
    project = ids.project()
    await make_histories(pool, project)
    return project


async def test_replaying_an_export_with_and_without_the_database_gives_the_live_states(
    pool: asyncpg.Pool, database_url: str, histories: str, tmp_path: Path
) -> None:
    out = tmp_path / "p.jsonl"
    cliplog("export", "--project", histories, "--output", str(out), database_url=database_url)
    header, events = export.read(out)
    events = list(events)
    assert header.count == len(events) == sum(map(len, EXPECTED_BECAUSE.values()))
    assert header.epoch == await pool.fetchval("SELECT epoch FROM log_identity")
    assert header.owners == {histories: "alice"} and header.selection.project_id == histories
    # each line is the row as stored
    stored = await pool.fetch("SELECT position, data, type, clip_status FROM events WHERE project_id = $1 "
                              "ORDER BY position", histories)  # fmt: skip
    assert [(e.position, e.data, e.type, e.clip_status) for e in events] == [tuple(r) for r in stored]

    live = await live_states(pool, histories)
    final = {s.event.clip_id: s.state for s in replay(events)}
    assert final == live
    from_file = cliplog("replay", "--file", str(out), database_url=None)
    from_db = cliplog("replay", "--project", histories, database_url=database_url)
    assert from_file.stdout == from_db.stdout
    assert f"{header.count} event(s) replayed; 0 recorded status(es) differ" in from_file.stdout


async def test_each_reason_printed_for_a_real_history(database_url: str, histories: str, tmp_path: Path) -> None:
    for clip, expected in EXPECTED_BECAUSE.items():
        done = cliplog("history", clip, "--project", histories, "--json", database_url=database_url)
        story = json.loads(done.stdout)
        assert [e["why"]["because"] for e in story["events"]] == expected, clip
    budget = json.loads(cliplog("history", "budget", "--project", histories, "--json", database_url=database_url).stdout)
    last = budget["events"][-1]
    assert "the budget is used up (attempt 2 of 2" in last["why"]["text"]
    assert "Invalid data found when processing input" in last["detail"]  # the error in full
    assert budget["events"][1]["gap_seconds"] == 1.0
    reaped = cliplog("history", "reaped", "--project", histories, database_url=database_url).stdout
    assert "detected by the reaper" in reaped and "attempt 2 of 2 waits until" in reaped
    stopped = cliplog("history", "stopped", "--project", histories, database_url=database_url).stdout
    assert "a person stopped it" in stopped and "detected by user" in stopped
    cancelled = cliplog("history", "cancelled", "--project", histories, database_url=database_url).stdout
    assert "cancelled, attempt 1 of 2: cancelled by the user" in cancelled and "a person stopped it" in cancelled
    missing = cliplog("history", "nope", "--project", histories, database_url=database_url, check=False)
    assert missing.returncode == 1 and "no events of clip 'nope'" in missing.stderr


async def test_replay_stops_where_asked(pool: asyncpg.Pool, database_url: str, histories: str) -> None:
    out = cliplog("replay", "--project", histories, "--clip", "budget", "--to-version", "3", database_url=database_url)
    assert "3 event(s) replayed" in out.stdout
    assert [line.split()[3] for line in out.stdout.splitlines() if "/budget  v" in line] == ["v1", "v2", "v3"]
    positions = [r["position"] for r in await pool.fetch(
        "SELECT position FROM events WHERE project_id = $1 ORDER BY position", histories)]  # fmt: skip
    middle = positions[len(positions) // 2]
    out = cliplog("replay", "--project", histories, "--at-position", str(middle), database_url=database_url)
    assert f"{len(positions) // 2 + 1} event(s) replayed" in out.stdout
    printed = [int(line.split()[0]) for line in out.stdout.splitlines() if f" {histories}/" in line]
    assert printed == positions[: len(positions) // 2 + 1]


def _without_positions(replayed: str) -> list[str]:
    """A replay's lines without the log's positions (an import gives the events new ones)."""
    return [line.split(None, 1)[1] if line[:8].strip().isdigit() else line for line in replayed.splitlines()]


async def test_export_import_into_an_empty_database_then_check_and_replay_agree(
    pool: asyncpg.Pool, database_url: str, make_database, histories: str, tmp_path: Path  # noqa: ANN001
) -> None:
    out = tmp_path / "p.jsonl"
    cliplog("export", "--project", histories, "--output", str(out), database_url=database_url)
    empty = await make_database(migrated=True)
    done = cliplog("import", str(out), database_url=empty)
    assert f"imported {len(list(export.read(out)[1]))} event(s) of {len(EXPECTED_BECAUSE)} clip(s)" in done.stdout
    assert "the projection equals a rebuild" in cliplog("check", database_url=empty).stdout
    source = cliplog("replay", "--project", histories, database_url=database_url).stdout
    target = cliplog("replay", "--project", histories, database_url=empty).stdout
    assert _without_positions(target) == _without_positions(source)
    conn = await asyncpg.connect(empty)
    try:
        assert await conn.fetchval("SELECT owner FROM projects WHERE project_id = $1", histories) == "alice"
        before = await conn.fetchval("SELECT count(*) FROM events")
        assert await conn.fetchval("SELECT epoch FROM log_identity") != export.read(out)[0].epoch

        again = cliplog("import", str(out), database_url=empty, check=False)
        assert again.returncode != 0
        assert f"already holds {len(EXPECTED_BECAUSE)} of the export's streams" in again.stderr and "--as-project" in again.stderr
        assert "Traceback" not in again.stderr
        assert await conn.fetchval("SELECT count(*) FROM events") == before

        renamed = cliplog("import", str(out), "--as-project", "copy-1", "--owner", "bob", database_url=empty)
        assert "into copy-1 (owner bob)" in renamed.stdout
        assert await conn.fetchval("SELECT count(*) FROM events WHERE project_id = 'copy-1'") == before
        assert await conn.fetchval("SELECT owner FROM projects WHERE project_id = 'copy-1'") == "bob"
        assert "the projection equals a rebuild" in cliplog("check", database_url=empty).stdout
        taken = cliplog("import", str(out), "--as-project", "copy-1", database_url=empty, check=False)
        assert taken.returncode != 0 and "is not a new project id" in taken.stderr
    finally:
        await conn.close()


async def test_a_broken_or_partial_export_is_refused_and_writes_nothing(
    database_url: str, make_database, histories: str, tmp_path: Path  # noqa: ANN001
) -> None:
    out = tmp_path / "p.jsonl"
    cliplog("export", "--project", histories, "--output", str(out), database_url=database_url)
    lines = out.read_bytes().splitlines(keepends=True)
    empty = await make_database(migrated=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[:-1]))
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"".join([*lines[:3], b'{"position": "x"}\n', *lines[3:]]))
    header = msgspec.json.decode(lines[0])
    after = cliplog("export", "--project", histories, "--after", header["range"]["upto_cursor"], "--output",
                    str(tmp_path / "none.jsonl"), database_url=database_url)  # fmt: skip
    assert "exported 0 event(s)" in after.stderr
    # an export that fails leaves no file behind, not even its temporary one
    target = tmp_path / "exports" / "bad.jsonl"
    target.parent.mkdir()
    bad = cliplog("export", "--all", "--after", "not-a-cursor", "--output", str(target), database_url=database_url,
                  check=False)  # fmt: skip
    assert bad.returncode == 2 and "is not a cursor from this feed" in bad.stderr and "Traceback" not in bad.stderr
    assert list(target.parent.iterdir()) == []
    nowhere = cliplog("export", "--all", "--output", str(tmp_path / "no" / "dir.jsonl"), database_url=database_url,
                      check=False)  # fmt: skip
    assert nowhere.returncode == 2 and "No such file or directory" in nowhere.stderr
    for path, message in ((cut, "is cut short"), (broken, "line 4: not an exported event"),
                          (tmp_path / "missing.jsonl", "cannot read")):  # fmt: skip
        refused = cliplog("import", str(path), database_url=empty, check=False)
        assert refused.returncode != 0 and message in refused.stderr, refused.stderr
    partial = tmp_path / "partial.jsonl"
    partial.write_bytes(lines[0] + b"".join(lines[5:]))
    refused = cliplog("import", str(partial), database_url=empty, check=False)
    assert refused.returncode != 0 and "only whole streams can be imported" in refused.stderr
    conn = await asyncpg.connect(empty)
    try:
        assert await conn.fetchval("SELECT count(*) FROM events") == 0
        assert await conn.fetchval("SELECT count(*) FROM clips") == 0
        assert await conn.fetchval("SELECT count(*) FROM projects") == 0
    finally:
        await conn.close()
