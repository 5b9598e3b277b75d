"""Fault tests: real processes, real PostgreSQL, Redis and FFmpeg. Every test ends with every clip `completed` or
`failed` with an error, and with the log's invariants checked (see Cluster.check_log)."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import httpx
import pytest

from tests.faults.conftest import Cluster
from tests.proc import alive

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]

CLIP = {"source": "games/match.mp4", "start": 5.0, "end": 9.0}


def _register(cluster: Cluster, clip_ids: list[str], project: str = "p1", **body: object) -> None:
    for clip_id in clip_ids:
        response = cluster.api.register(project, clip_id=clip_id, **{**CLIP, **body})
        assert response.status_code == 201, response.text


def _history(cluster: Cluster, clip_id: str, project: str = "p1") -> list[dict]:
    return cluster.api.history(project, clip_id)


def _until(condition, what: str, timeout: float = 30) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.02)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize(
    "hang",
    [
        pytest.param('exec sleep 600\n', id="never-exits"),
        pytest.param('fifo="$STATE/in"; [ -p "$fifo" ] || mkfifo "$fifo"; exec cat "$fifo"\n', id="blocks-on-input"),
    ],
)
def test_ffmpeg_hang_times_out_retries_with_growing_delays_then_fails_and_manual_retry_succeeds(
    cluster: Cluster, hang: str
) -> None:
    wrapper = cluster.wrapper("hang", f'if [ -e "$STATE/hang" ]; then\n{hang}fi\nexec "$REAL" "$@"\n')
    (cluster.root / "hang.state" / "hang").touch()
    api = cluster.serve()
    cluster.worker(CLIPLOG_FFMPEG=wrapper, CLIPLOG_ATTEMPT_TIMEOUT="1.5")
    _register(cluster, ["hung"])
    clip = api.wait_for("p1", ["hung"], timeout=60)["hung"]
    assert clip["status"] == "failed" and clip["attempt"] == 3 and clip["last_error"]["code"] == "timed_out"
    assert clip["retry_eligible"] is True
    history = _history(cluster, "hung")
    timeouts = [e for e in history if e["type"] == "extraction.timed_out"]
    assert [e["data"]["detected_by"] for e in timeouts] == ["worker"] * 3
    assert [e["data"]["reason"] for e in timeouts] == ["deadline"] * 3  # no output, but the deadline came first
    retries = [e for e in history if e["type"] == "extraction.requested" and e["data"]["reason"] == "auto_retry"]
    delays = [
        (_time(r["data"]["not_before"]) - _time(t["recorded_at"])).total_seconds() for t, r in zip(timeouts, retries)
    ]
    assert len(delays) == 2 and 0 < delays[0] <= delays[1], delays
    assert not list((cluster.root / "clips").glob("*/.tmp-*")), "temporary files left behind"

    (cluster.root / "hang.state" / "hang").unlink()
    assert api.retry("p1", "hung").status_code == 202
    clip = api.wait_for("p1", ["hung"], timeout=30)["hung"]
    assert clip["status"] == "completed" and clip["run"] == 2 and clip["attempt"] == 1
    cluster.check_log()


def test_sigkilled_worker_is_detected_by_the_reaper_and_another_worker_completes(cluster: Cluster) -> None:
    slow = cluster.wrapper("slow", 'sleep 30\nexec "$REAL" "$@"\n')
    api = cluster.serve()
    doomed = cluster.worker("doomed", CLIPLOG_FFMPEG=slow, CLIPLOG_ATTEMPT_TIMEOUT="60")
    _register(cluster, ["orphan"])
    api.wait_for("p1", ["orphan"], until=lambda c: c["status"] == "running", timeout=20)
    killed_at = time.time()
    doomed.kill()
    cluster.worker("rescuer")
    clip = api.wait_for("p1", ["orphan"], timeout=30)["orphan"]
    assert clip["status"] == "completed" and clip["attempt"] == 2
    timed_out = next(e for e in _history(cluster, "orphan") if e["type"] == "extraction.timed_out")
    assert timed_out["data"]["detected_by"] == "reaper" and timed_out["data"]["reason"] == "lease"
    detection = _time(timed_out["recorded_at"]).timestamp() - killed_at
    # LEASE_TIMEOUT (2 s) plus a reaper period (0.5 s) plus one heartbeat interval of slack.
    assert detection < 2 + 0.5 + 1.5, detection
    cluster.check_log()


@pytest.mark.parametrize("fault", ["flush", "restart"])
def test_redis_losing_its_data_loses_no_clip(cluster: Cluster, fault: str) -> None:
    slow = cluster.wrapper("slow", 'sleep 0.5\nexec "$REAL" "$@"\n')
    api = cluster.serve()
    cluster.worker(concurrency=1, CLIPLOG_FFMPEG=slow)
    clip_ids = [f"c{i}" for i in range(6)]
    _register(cluster, clip_ids)
    api.wait_for("p1", clip_ids[:1], until=lambda c: c["status"] != "pending", timeout=20)
    if fault == "flush":
        cluster.redis.flush()
    else:
        cluster.redis.restart(down_for=1.0)
    clips = api.wait_for("p1", clip_ids, timeout=60)
    assert {c["status"] for c in clips.values()} == {"completed"}
    cluster.check_log()


def test_postgres_restart_mid_run_gives_503s_meanwhile_and_loses_nothing(cluster: Cluster) -> None:
    slow = cluster.wrapper("slow", 'sleep 0.3\nexec "$REAL" "$@"\n')
    api = cluster.serve()
    cluster.worker(concurrency=2, CLIPLOG_FFMPEG=slow)
    clip_ids = [f"c{i}" for i in range(6)]
    _register(cluster, clip_ids)
    codes: list[int] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=api.base_url, headers=api.http.headers, timeout=5) as client:
            while not done.is_set():
                try:
                    codes.append(client.get("/api/clips/projects/p1/clips").status_code)
                except httpx.HTTPError:
                    codes.append(-1)
                time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        # mid-run: extractions under way (the rest still waiting) and the prober answered
        api.wait_for("p1", clip_ids[:1], until=lambda c: c["status"] != "pending", timeout=20)
        _until(lambda: 200 in codes, "the prober got no answer")
        cluster.postgres.restart()
        restarted = len(codes)
        _until(lambda: 200 in codes[restarted:], "the API did not answer 200 again after the restart")
    finally:
        done.set()
        prober.join()
    assert 500 not in codes and -1 not in codes, codes
    assert set(codes) <= {200, 503}
    clips = api.wait_for("p1", clip_ids, timeout=60)
    assert {c["status"] for c in clips.values()} == {"completed"}
    health = httpx.get(api.base_url + "/api/extraction/health").json()
    assert health["database"]["ok"] is True
    cluster.check_log()


def test_a_job_enqueued_twice_and_two_racing_workers_start_an_attempt_once(cluster: Cluster) -> None:
    import asyncio

    import asyncpg
    from arq.connections import RedisSettings, create_pool

    from handlers.reactor import job_queue

    api = cluster.serve()
    _register(cluster, [f"c{i}" for i in range(4)])

    async def enqueue_duplicates() -> None:
        conn = await asyncpg.connect(cluster.database_url)
        try:
            queue = await job_queue(conn)
        finally:
            await conn.close()
        redis = await create_pool(RedisSettings.from_dsn(cluster.redis_url))
        try:
            for i in range(4):
                for copy in range(3):
                    await redis.enqueue_job(
                        "extract", "p1", f"c{i}", 1, 1, _job_id=f"dup-{i}-{copy}", _queue_name=queue.name
                    )
        finally:
            await redis.aclose()

    asyncio.run(enqueue_duplicates())
    cluster.worker("w1", concurrency=3)
    cluster.worker("w2", concurrency=3)
    clips = api.wait_for("p1", [f"c{i}" for i in range(4)], timeout=30)
    assert {c["status"] for c in clips.values()} == {"completed"}
    events = cluster.check_log()
    assert sum(1 for e in events if e["type"] == "extraction.started") == 4


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        pytest.param('echo "simulated encoder crash" >&2; exit 1\n', "ffmpeg_exit", id="exit-code"),
        pytest.param("kill -9 $$\n", "ffmpeg_killed", id="killed-by-signal"),
    ],
)
def test_ffmpeg_failure_is_retryable_and_retried(cluster: Cluster, failure: str, code: str) -> None:
    # Fails the first cut only (probes run ffprobe or `ffmpeg -i`, which have no output file argument).
    wrapper = cluster.wrapper(
        "flaky",
        'case "$*" in *"-f mp4"*) if [ ! -e "$STATE/failed" ]; then touch "$STATE/failed"; ' + failure.strip()
        + '; fi;; esac\nexec "$REAL" "$@"\n',
    )
    api = cluster.serve()
    cluster.worker(CLIPLOG_FFMPEG=wrapper)
    _register(cluster, ["flaky"])
    clip = api.wait_for("p1", ["flaky"], timeout=30)["flaky"]
    assert clip["status"] == "completed" and clip["attempt"] == 2, clip
    failed = next(e for e in _history(cluster, "flaky") if e["type"] == "extraction.failed")
    assert failed["data"]["code"] == code and failed["data"]["retryable"] is True
    assert failed["clip_status"] == "retrying"
    cluster.check_log()


def test_corrupt_and_missing_sources_fail_at_once_with_a_clear_message(cluster: Cluster) -> None:
    media = cluster.root / "media" / "games"
    (media / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 1000)
    (media / "vanishing.mp4").write_bytes((media / "match.mp4").read_bytes())
    api = cluster.serve()
    _register(cluster, ["corrupt"], source="games/corrupt.mp4")
    _register(cluster, ["missing"], source="games/vanishing.mp4")
    (media / "vanishing.mp4").unlink()  # gone before any worker looked at it
    cluster.worker()
    clips = api.wait_for("p1", ["corrupt", "missing"], timeout=30)
    for clip_id, code, words in [("corrupt", "not_a_video", "not a video"), ("missing", "source_missing", "does not exist")]:
        clip = clips[clip_id]
        assert clip["status"] == "failed" and clip["attempt"] == 1, clip
        assert clip["last_error"]["code"] == code and clip["last_error"]["retryable"] is False
        assert words in clip["last_error"]["message"] and "/" + "tmp" not in clip["last_error"]["message"]
    cluster.check_log()


def test_sigterm_hands_running_extractions_back_without_using_an_attempt(cluster: Cluster) -> None:
    slow = cluster.wrapper("slow", 'sleep 20\nexec "$REAL" "$@"\n')
    api = cluster.serve()
    deploying = cluster.worker("old", CLIPLOG_FFMPEG=slow, CLIPLOG_ATTEMPT_TIMEOUT="60", CLIPLOG_SHUTDOWN_GRACE="1")
    _register(cluster, ["deploy"])
    api.wait_for("p1", ["deploy"], until=lambda c: c["status"] == "running", timeout=20)
    deploying.terminate()
    assert deploying.wait(15) == 0
    clip = api.clip("p1", "deploy")
    assert clip["status"] == "pending" and clip["attempt"] == 2 and clip["max_attempts"] == 4, clip
    cluster.worker("new")
    clip = api.wait_for("p1", ["deploy"], timeout=30)["deploy"]
    assert clip["status"] == "completed"
    handed = [e for e in _history(cluster, "deploy") if e["type"] == "extraction.requested"][-1]
    assert handed["data"]["reason"] == "handed_back"
    cluster.check_log()


def test_a_person_retrying_a_slow_clip_stops_the_hung_ffmpeg_at_once(cluster: Cluster) -> None:
    wrapper = cluster.wrapper(
        "hang-once",
        'if [ ! -e "$STATE/hung" ]; then touch "$STATE/hung"; echo $$ > "$STATE/pid"; exec sleep 600; fi\n'
        'exec "$REAL" "$@"\n',
    )
    api = cluster.serve(CLIPLOG_SLOW_AFTER="1")
    cluster.worker(concurrency=1, CLIPLOG_FFMPEG=wrapper, CLIPLOG_ATTEMPT_TIMEOUT="120", CLIPLOG_LEASE_TIMEOUT="60")
    _register(cluster, ["stuck"])
    api.wait_for("p1", ["stuck"], until=lambda c: c["status"] == "running" and c["slow"], timeout=20)
    pid = int((cluster.root / "hang-once.state" / "pid").read_text())
    assert api.retry("p1", "stuck").status_code == 202
    clip = api.wait_for("p1", ["stuck"], timeout=20)["stuck"]  # one worker slot: the hung cut must have let go
    assert clip["status"] == "completed" and clip["run"] == 2
    assert not alive(pid)
    detected = [
        (e["data"]["detected_by"], e["data"]["reason"]) for e in _history(cluster, "stuck") if e["type"] == "extraction.timed_out"
    ]
    assert detected == [("user", "user")]
    cluster.check_log()


def test_an_idle_worker_stops_cleanly_on_sigterm(cluster: Cluster) -> None:
    cluster.serve()
    worker = cluster.worker()
    worker.wait_log([r"worker \S+ started"])  # its signal handlers are in place; idle: no clip was registered
    worker.terminate()
    assert worker.wait(15) == 0
