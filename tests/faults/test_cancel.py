"""Cancel with real processes and a real FFmpeg: a running FFmpeg is stopped within a heartbeat and its partial
output removed; a pending or retrying clip is never started; a completion that arrives after the cancel is
discarded with its file; nothing automatic (worker, reactor, reaper) moves a cancelled clip (DESIGN.md invariant 11)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.faults.conftest import Cluster
from tests.proc import alive

pytestmark = [pytest.mark.fault, pytest.mark.timeout(180)]

LONG = {"source": "games/match.mp4", "start": 2.0, "end": 28.0}
SHORT = {"source": "games/match.mp4", "start": 5.0, "end": 9.0}
HEARTBEAT = 0.5  # FAST's CLIPLOG_HEARTBEAT_INTERVAL


def _wait(condition, timeout: float, what: str) -> float:  # noqa: ANN001
    """Poll `condition` until it holds; the seconds it took."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what} within {timeout:g} s")
        time.sleep(0.02)
    return time.monotonic() - began


def _outputs(cluster: Cluster) -> list[Path]:
    return list((cluster.root / "clips").glob("*/*"))


def _types(cluster: Cluster, clip_id: str) -> list[str]:
    return [e["type"].removeprefix("extraction.") for e in cluster.api.history("p1", clip_id)]


def _nothing_moves(cluster: Cluster, clip_id: str, seconds: float) -> None:
    """Absence takes waiting: for `seconds` (past every automatic timer in FAST: lease 2 s, requeue 2 s, reaper
    0.5 s) the cancelled clip's history stays as it is, while what could move it was there to: every process still
    running, a worker alive, and the reactor (or the dispatcher) through every event so far, the cancel included."""
    before = _types(cluster, clip_id)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert cluster.api.clip("p1", clip_id)["status"] == "cancelled"
        time.sleep(0.2)
    assert _types(cluster, clip_id) == before
    assert all(process.running for process in cluster.processes), [p.name for p in cluster.processes if not p.running]
    health = cluster.api.http.get("/api/extraction/health").json()
    assert health["workers"]["alive"] >= 1 and health["reactor"]["lag_events"] == 0, health


def test_cancel_stops_a_running_ffmpeg_within_a_heartbeat_and_leaves_no_output(cluster: Cluster) -> None:
    # The real FFmpeg, reading its input at its native rate (-re): a 26 s clip takes 26 s, writing as it goes.
    slow = cluster.wrapper("realtime", 'echo $$ > "$STATE/pid"\nexec "$REAL" -re "$@"\n')
    api = cluster.serve()
    cluster.worker(CLIPLOG_FFMPEG=slow, CLIPLOG_ATTEMPT_TIMEOUT="120")
    assert api.register("p1", clip_id="long", **LONG).status_code == 201
    api.wait_for("p1", ["long"], until=lambda c: c["status"] == "running", timeout=30)
    pid_file = cluster.root / "realtime.state" / "pid"
    _wait(lambda: pid_file.exists() and pid_file.read_text().strip(), 10, "FFmpeg did not start")
    pid = int(pid_file.read_text())
    assert "ffmpeg" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")  # FFmpeg itself (exec)
    _wait(lambda: any(p.name.startswith(".tmp-") and p.stat().st_size > 0 for p in _outputs(cluster)), 15,
          "FFmpeg wrote no partial output")

    response = api.cancel("p1", "long")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "cancelled"
    took = _wait(lambda: not alive(pid), 10 * HEARTBEAT, "FFmpeg was still running")
    assert took <= 2 * HEARTBEAT + 1.0, took  # a heartbeat finds the attempt no longer current and kills the group
    _wait(lambda: not _outputs(cluster), 5, "the partial output was not removed")

    assert api.cancel("p1", "long").status_code == 200  # a second cancel appends nothing
    _nothing_moves(cluster, "long", 3.0)
    assert _types(cluster, "long") == ["requested", "started", "cancelled"]
    assert not _outputs(cluster)
    assert "was superseded" in cluster.logs()
    cluster.check_log()

    # A person's retry starts a new run, which the real FFmpeg (no longer slowed) completes.
    cluster.wrapper("realtime", 'exec "$REAL" "$@"\n')
    retried = api.retry("p1", "long")
    assert retried.status_code == 202 and retried.json()["run"] == 2
    assert api.wait_for("p1", ["long"], timeout=60)["long"]["status"] == "completed"
    cluster.check_log()


@pytest.mark.parametrize("dispatch", ["fifo", "fair"])
def test_a_cancelled_pending_or_retrying_clip_is_never_started(cluster: Cluster, dispatch: str) -> None:
    # Every first run of a clip fails (exit 1); later ones run the real FFmpeg.
    flaky = cluster.wrapper(
        "flaky", 'for a in "$@"; do case "$a" in *.tmp-*) base=$(basename "$a"); esac; done\n'
        'key="${base%%.r*}"\nif [ ! -e "$STATE/$key" ]; then : > "$STATE/$key"; echo "boom: first try" >&2; exit 1; fi\n'
        'exec "$REAL" "$@"\n'
    )
    api = cluster.serve()
    assert api.register("p1", clip_id="waiting", **SHORT).status_code == 201
    assert api.cancel("p1", "waiting").status_code == 202  # pending: no worker yet
    cluster.worker(CLIPLOG_FFMPEG=flaky, CLIPLOG_RETRY_BASE="3", CLIPLOG_RETRY_MAX="3", CLIPLOG_DISPATCH=dispatch)
    assert api.register("p1", clip_id="flaky", **SHORT).status_code == 201
    clip = api.wait_for("p1", ["flaky"], until=lambda c: c["status"] == "retrying", timeout=30)["flaky"]
    assert clip["last_error"]["stderr_tail"] == "boom: first try"
    assert clip["last_error"]["command"][0] == "flaky.sh" and "$CLIPLOG_MEDIA_ROOT/games/match.mp4" in clip["last_error"]["command"]
    assert not any(str(cluster.root) in arg for arg in clip["last_error"]["command"])
    cancelled = api.cancel("p1", "flaky")
    assert cancelled.status_code == 202 and cancelled.json()["attempt"] == 2
    jobs = (r"extract:\S*p1/waiting:1:1:extract ●", r"extract:\S*p1/flaky:1:2:extract ●")  # arq's "job done"
    if dispatch == "fifo":  # the jobs of both cancelled attempts ran (the retry's once it was due), found them cancelled
        for job in jobs:
            _wait(lambda: re.search(job, cluster.logs()) is not None, 30, f"no {job}")
    # Past the requeue (2 s), the lease timeout (2 s) and the retry's due time (at most 3 s after the failure):
    # nothing moved.
    _nothing_moves(cluster, "flaky", 4.0)
    if dispatch == "fair":  # a cancelled attempt waits for nothing: it was never admitted, no job of it ever ran
        assert not [job for job in jobs if re.search(job, cluster.logs(tail=10**8))]
    assert _types(cluster, "waiting") == ["requested", "cancelled"]
    assert _types(cluster, "flaky") == ["requested", "started", "failed", "requested", "cancelled"]
    failed = next(e for e in cluster.api.history("p1", "flaky") if e["type"] == "extraction.failed")
    assert failed["data"]["stderr_tail"] == "boom: first try" and failed["data"]["command"][0] == "flaky.sh"
    cluster.check_log()


def test_a_completion_that_arrives_after_the_cancel_is_discarded_with_its_file(cluster: Cluster) -> None:
    """FFmpeg finishes the cut, then the wrapper holds its exit until the test has cancelled the clip: the worker's
    completion then meets a cancelled clip, is refused, and its validated, renamed file is removed. The heartbeat is
    slowed (30 s) so that it cannot stop the attempt first: the completion really races the cancel."""
    held = cluster.wrapper(
        "held", '"$REAL" "$@"; code=$?\n: > "$STATE/cut"\nwhile [ ! -e "$STATE/go" ]; do sleep 0.05; done\nexit $code\n'
    )
    api = cluster.serve()
    cluster.worker(CLIPLOG_FFMPEG=held, CLIPLOG_HEARTBEAT_INTERVAL="30", CLIPLOG_LEASE_TIMEOUT="60")
    assert api.register("p1", clip_id="race", **SHORT).status_code == 201
    state = cluster.root / "held.state"
    _wait(lambda: (state / "cut").exists(), 30, "FFmpeg did not finish its cut")
    assert api.cancel("p1", "race").status_code == 202
    (state / "go").touch()
    _wait(lambda: "its Complete was discarded" in cluster.logs(), 30, "the worker did not try to record its completion")
    assert not _outputs(cluster), _outputs(cluster)
    endings = [t for t in _types(cluster, "race") if t in ("completed", "failed", "timed_out", "cancelled")]
    assert endings == ["cancelled"]
    assert api.clip("p1", "race")["status"] == "cancelled" and api.clip("p1", "race")["file_url"] is None
    cluster.check_log()


def test_a_timed_out_attempt_records_what_ffmpeg_was_run_with_and_its_last_words(cluster: Cluster) -> None:
    """The worker keeps a hung FFmpeg's stderr as it comes, so the timeout says what it said before it hung (its
    last 20 lines), and the command without absolute paths."""
    lines = "".join(f'echo "line {n}" >&2\n' for n in range(1, 31))
    hung = cluster.wrapper("hung", lines + "exec sleep 600\n")
    api = cluster.serve()
    cluster.worker(CLIPLOG_FFMPEG=hung, CLIPLOG_ATTEMPT_TIMEOUT="1.5")
    assert api.register("p1", clip_id="hung", **SHORT).status_code == 201
    clip = api.wait_for("p1", ["hung"], timeout=30)["hung"]
    assert clip["status"] == "failed" and clip["last_error"]["code"] == "timed_out"
    timed_out = [e for e in api.history("p1", "hung") if e["type"] == "extraction.timed_out"][-1]
    assert timed_out["data"]["detected_by"] == "worker" and timed_out["data"]["attempt"] == clip["attempt"]
    assert timed_out["data"]["stderr_tail"] == "\n".join(f"line {n}" for n in range(11, 31))
    command = timed_out["data"]["command"]
    assert command[0] == "hung.sh" and "-ss" in command and "$CLIPLOG_MEDIA_ROOT/games/match.mp4" in command
    assert any(arg.startswith(f"$CLIPLOG_OUTPUT_ROOT/p1/.tmp-hung.r1a{clip['attempt']}.") for arg in command), command
    assert clip["last_error"]["command"] == command and clip["last_error"]["stderr_tail"] == timed_out["data"]["stderr_tail"]
    cluster.check_log()
