"""`arq runtime.bootstrap.WorkerSettings`: arq's own CLI runs the worker with the reactor, the reaper and the presence
key started from `on_startup` and stopped from `on_shutdown`, and arq's SIGTERM handler hands a running extraction
back without using up its attempt (real processes: `cliplog serve` and `python -m arq`)."""

from __future__ import annotations

import sys

import pytest

from runtime.processes import Process
from tests.faults.conftest import Cluster

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]

CLIP = {"source": "games/match.mp4", "start": 5.0, "end": 9.0}


def _arq_worker(cluster: Cluster, name: str, **env: str) -> Process:
    command = [sys.executable, "-m", "arq", "runtime.bootstrap.WorkerSettings"]
    return cluster.add(Process(name, command, {**cluster.env, **env}, cluster.root / f"{name}.log"))


def _alive_workers(cluster: Cluster) -> int:
    return cluster.api.http.get("/api/extraction/health").json()["workers"]["alive"]


def test_arqs_cli_runs_the_worker_and_its_sigterm_hands_the_attempt_back(cluster: Cluster) -> None:
    slow_marker = cluster.root / "slow.state" / "on"
    slow = cluster.wrapper("slow", 'if [ -e "$STATE/on" ]; then sleep 20; fi\nexec "$REAL" "$@"\n')
    api = cluster.serve()
    first = _arq_worker(cluster, "arq-old", CLIPLOG_FFMPEG=slow, CLIPLOG_ATTEMPT_TIMEOUT="60", CLIPLOG_SHUTDOWN_GRACE="1")

    # The only worker is arq's CLI: the reactor it started enqueued the job, and its job extracted the clip.
    assert api.register("p1", clip_id="quick", **CLIP).status_code == 201
    assert api.wait_for("p1", ["quick"], timeout=60)["quick"]["status"] == "completed"
    assert _alive_workers(cluster) == 1  # its presence key

    slow_marker.touch()
    assert api.register("p1", clip_id="deploy", **CLIP).status_code == 201
    api.wait_for("p1", ["deploy"], until=lambda c: c["status"] == "running", timeout=30)
    first.terminate()
    assert first.wait(15) == 0
    clip = api.clip("p1", "deploy")
    assert clip["status"] == "pending" and clip["attempt"] == 2 and clip["max_attempts"] == 4, clip
    handed = [e for e in api.history("p1", "deploy") if e["type"] == "extraction.requested"][-1]
    assert handed["data"]["reason"] == "handed_back"
    assert _alive_workers(cluster) == 0  # on_shutdown removed the presence key

    slow_marker.unlink()
    _arq_worker(cluster, "arq-new")
    assert api.wait_for("p1", ["deploy"], timeout=60)["deploy"]["status"] == "completed"
    cluster.check_log()


def test_arqs_cli_lets_a_running_extraction_finish_within_the_shutdown_grace(cluster: Cluster) -> None:
    started = cluster.root / "slowish.state" / "started"
    slowish = cluster.wrapper("slowish", 'touch "$STATE/started"; sleep 2\nexec "$REAL" "$@"\n')
    api = cluster.serve()
    worker = _arq_worker(cluster, "arq", CLIPLOG_FFMPEG=slowish, CLIPLOG_SHUTDOWN_GRACE="30")
    assert api.register("p1", clip_id="finishing", **CLIP).status_code == 201
    api.wait_for("p1", ["finishing"], until=lambda c: c["status"] == "running" and started.exists(), timeout=30)
    worker.terminate()
    assert worker.wait(30) == 0
    clip = api.clip("p1", "finishing")
    assert clip["status"] == "completed" and clip["attempt"] == 1, clip
    cluster.check_log()
