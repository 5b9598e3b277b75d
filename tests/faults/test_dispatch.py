"""Fair dispatch with real processes, PostgreSQL, Redis and FFmpeg: a newcomer is not stuck behind another user's
backlog, the concurrency limits hold across workers, batch work is not starved by interactive work, a retry waits
for its backoff, and a Redis flush while attempts wait for admission loses nothing. Every claim is read from the log
(positions and recorded times of `started` and the outcomes), never from sleeps."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, defaultdict
from datetime import datetime

import asyncpg
import httpx
import pytest

from api.auth import create_token
from domain.dispatch import BATCH_EVERY
from runtime import processes
from tests.e2e.system import Api
from tests.faults.conftest import Cluster

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

CLIP = {"source": "games/match.mp4", "start": 5.0, "end": 7.0}
OUTCOMES = ("extraction.completed", "extraction.failed", "extraction.timed_out")


def _client_for(cluster: Cluster, user: str) -> Api:
    async def token() -> str:
        conn = await asyncpg.connect(cluster.database_url)
        try:
            return await create_token(conn, user)
        finally:
            await conn.close()

    client = Api(cluster.api.base_url, asyncio.run(token()))
    cluster.clients.append(client)
    return client


def _register(api: Api, project: str, clip_ids: list[str], **body: object) -> None:
    for clip_id in clip_ids:
        response = api.register(project, clip_id=clip_id, **{**CLIP, **body})
        assert response.status_code == 201, response.text


def _stop_workers(cluster: Cluster) -> None:
    """SIGTERM every worker (running attempts are handed back and so get an outcome), for `check_log`."""
    processes.Process.stop_many([p for p in cluster.processes if not isinstance(p, processes.ApiProcess)], 15)


def _project_of(event: asyncpg.Record) -> str:
    return event["stream"].split("/")[0]


def _clip_of(event: asyncpg.Record) -> str:
    return event["stream"].split("/")[1]


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _most_running(events: list[asyncpg.Record], group) -> dict[str, int]:  # noqa: ANN001
    """The most attempts of each group (`group(event)`) running at once, from the log: an attempt runs from its
    `started` to its outcome, in position order."""
    running: Counter[str] = Counter()
    most: Counter[str] = Counter()
    for event in events:
        if event["type"] == "extraction.started":
            running[group(event)] += 1
            most[group(event)] = max(most[group(event)], running[group(event)])
        elif event["type"] in OUTCOMES:  # every outcome ends a started attempt (check_log)
            running[group(event)] -= 1
    return dict(most)


@pytest.mark.parametrize("slots", [1, 2], ids=["one-slot", "two-slots"])
def test_a_newcomer_starts_within_one_attempt_per_slot_of_another_users_backlog_of_200(
    cluster: Cluster, slots: int
) -> None:
    """Bound: when bob's request is recorded at most `slots` of alice's attempts are in flight (running or
    admitted), and the next slot that frees goes to bob (he has none in flight); so at most `slots` of alice's
    attempts start between bob's `requested` and his `started`. First come, first served would start every one of
    alice's waiting attempts first. With one slot, alice has none in flight whenever it frees: only whose turn it
    is lets bob in."""
    slow = cluster.wrapper("slow", 'case "$*" in *"-f mp4"*) sleep 0.15;; esac\nexec "$REAL" "$@"\n')
    alice = cluster.serve()
    for k in range(slots):
        cluster.worker(f"w{k}", concurrency=1, CLIPLOG_FFMPEG=slow)
    backlog = [f"a{i:03d}" for i in range(200)]
    _register(alice, "alpha", backlog)
    bob = _client_for(cluster, "bob")
    _register(bob, "beta", ["b1"])
    assert bob.wait_for("beta", ["b1"], timeout=60)["b1"]["status"] == "completed"
    health = httpx.get(alice.base_url + "/api/extraction/health").json()
    _stop_workers(cluster)
    events = cluster.check_log()
    requested = next(e["position"] for e in events if _project_of(e) == "beta" and e["type"] == "extraction.requested")
    started = next(e["position"] for e in events if _project_of(e) == "beta" and e["type"] == "extraction.started")
    alice_starts = [e["position"] for e in events if _project_of(e) == "alpha" and e["type"] == "extraction.started"]
    ahead = [p for p in alice_starts if requested < p < started]
    assert len(ahead) <= slots, f"{len(ahead)} of alice's attempts started while bob's waited"
    waiting = [c for c in alice.clips("alpha") if c["status"] == "pending"]
    assert len(waiting) > 100, f"alice's backlog had drained ({len(waiting)} left): the test proves nothing"
    assert health["dispatch"]["waiting"]["interactive"] > 0 and health["dispatch"]["oldest_wait_seconds"] > 0


def test_project_and_owner_limits_hold_under_three_workers(cluster: Cluster) -> None:
    slow = cluster.wrapper("slow", 'case "$*" in *"-f mp4"*) sleep 0.3;; esac\nexec "$REAL" "$@"\n')
    limits = {"CLIPLOG_PROJECT_CONCURRENCY": "1", "CLIPLOG_OWNER_CONCURRENCY": "2", "CLIPLOG_FFMPEG": slow}
    alice = cluster.serve()
    for name in ("w1", "w2", "w3"):
        cluster.worker(name, concurrency=2, **limits)  # 6 slots: only the limits keep them from being used
    bob = _client_for(cluster, "bob")
    ids = {project: [f"{project}-{i}" for i in range(5)] for project in ("p1", "p2", "p3", "q1")}
    for project in ("p1", "p2", "p3"):
        _register(alice, project, ids[project])
    _register(bob, "q1", ids["q1"])
    for project, clip_ids in ids.items():
        client = bob if project == "q1" else alice
        clips = client.wait_for(project, clip_ids, timeout=90)
        assert {c["status"] for c in clips.values()} == {"completed"}, project
    events = cluster.check_log()
    owner = {"p1": "alice", "p2": "alice", "p3": "alice", "q1": "bob"}
    per_project = _most_running(events, _project_of)
    per_owner = _most_running(events, lambda e: owner[_project_of(e)])
    overall = _most_running(events, lambda e: "all")
    assert max(per_project.values()) == 1, per_project
    assert per_owner == {"alice": 2, "bob": 1}, per_owner  # bob has one project: its limit is his
    assert overall["all"] == 3, overall  # the workers had room for 6; the limits held it at 2 + 1


def test_batch_clips_complete_while_interactive_work_keeps_arriving(cluster: Cluster) -> None:
    slow = cluster.wrapper("slow", 'case "$*" in *"-f mp4"*) sleep 0.15;; esac\nexec "$REAL" "$@"\n')
    alice = cluster.serve()
    bob = _client_for(cluster, "bob")
    batch = [f"bulk{i}" for i in range(4)]
    _register(alice, "bulk", batch, priority="batch")
    stop = threading.Event()
    arrived: list[str] = []

    def keep_arriving() -> None:  # interactive clips, faster than one worker slot can cut them
        while not stop.is_set():
            clip_id = f"ui{len(arrived)}"
            if bob.register("ui", clip_id=clip_id, **CLIP).status_code == 201:
                arrived.append(clip_id)
            stop.wait(0.05)

    feeder = threading.Thread(target=keep_arriving)
    feeder.start()
    try:
        while len(arrived) < 10:  # a backlog of interactive work before the worker starts
            stop.wait(0.05)
        cluster.worker(concurrency=1, CLIPLOG_FFMPEG=slow)
        clips = alice.wait_for("bulk", batch, timeout=90)
    finally:
        stop.set()
        feeder.join()
    assert {c["status"] for c in clips.values()} == {"completed"}
    _stop_workers(cluster)
    events = cluster.check_log()
    starts = [_project_of(e) for e in events if e["type"] == "extraction.started"]
    last_batch = max(i for i, p in enumerate(starts) if p == "bulk")
    runs = "".join("b" if p == "bulk" else "i" for p in starts[: last_batch + 1]).split("b")
    assert max(len(r) for r in runs) <= BATCH_EVERY - 1, starts  # at least 1 in BATCH_EVERY admissions
    assert starts.count("ui") >= 3 * len(batch) - BATCH_EVERY, starts  # interactive went first meanwhile
    waiting = {c["clip_id"] for c in bob.clips("ui") if c["status"] == "pending"}
    assert waiting, "interactive work had stopped arriving: the test proves nothing"


def test_a_retry_is_admitted_no_earlier_than_its_backoff_allows(cluster: Cluster) -> None:
    flaky = cluster.wrapper(
        "flaky",
        'case "$*" in *"-f mp4"*) if [ ! -e "$STATE/failed" ]; then touch "$STATE/failed"; exit 1; fi;; esac\n'
        'exec "$REAL" "$@"\n',
    )
    api = cluster.serve()
    cluster.worker(CLIPLOG_FFMPEG=flaky, CLIPLOG_RETRY_BASE="2", CLIPLOG_RETRY_MAX="2")
    _register(api, "p1", ["again"])
    clip = api.wait_for("p1", ["again"], timeout=30)["again"]
    assert clip["status"] == "completed" and clip["attempt"] == 2, clip
    history = api.history("p1", "again")
    retry = next(e for e in history if e["type"] == "extraction.requested" and e["data"]["attempt"] == 2)
    started = next(e for e in history if e["type"] == "extraction.started" and e["data"]["attempt"] == 2)
    not_before = _at(retry["data"]["not_before"])
    assert (not_before - _at(retry["recorded_at"])).total_seconds() >= 1.0  # the backoff: 1-2 s
    assert _at(started["recorded_at"]) >= not_before
    cluster.check_log()


def test_redis_flushed_while_clips_wait_for_admission_loses_nothing(cluster: Cluster) -> None:
    slow = cluster.wrapper("slow", 'case "$*" in *"-f mp4"*) sleep 0.5;; esac\nexec "$REAL" "$@"\n')
    api = cluster.serve()
    cluster.worker(concurrency=1, CLIPLOG_FFMPEG=slow)
    clip_ids = [f"c{i}" for i in range(6)]
    _register(api, "p1", clip_ids)
    api.wait_for("p1", clip_ids[:1], until=lambda c: c["status"] == "running", timeout=20)
    dispatch = httpx.get(api.base_url + "/api/extraction/health").json()["dispatch"]
    assert dispatch["waiting"]["interactive"] >= 4, dispatch  # waiting in PostgreSQL, not in the queue
    cluster.redis.flush()
    clips = api.wait_for("p1", clip_ids, timeout=60)
    assert {c["status"] for c in clips.values()} == {"completed"}
    events = cluster.check_log()
    started = Counter(_clip_of(e) for e in events if e["type"] == "extraction.started")
    assert started == {clip_id: 1 for clip_id in clip_ids}, started
    assert {c["attempt"] for c in clips.values()} == {1}
    per_clip = defaultdict(list)
    for event in events:
        per_clip[_clip_of(event)].append(event["type"])
    assert all(types.count("extraction.completed") == 1 for types in per_clip.values()), per_clip
