"""runtime/processes.py with real child processes: stopping escalates to SIGKILL, SIGKILL reaches the process
group, the supervisor restarts what crashed and not what was stopped, start-up fails fast when a child exits, and
the private Redis is flushed and restarted on its port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from runtime.processes import Cluster, Process, Redis, wait_healthy
from tests.proc import alive


def _sh(name: str, script: str, tmp_path: Path) -> Process:
    return Process(name, ["sh", "-c", script], os.environ, tmp_path / f"{name}.log")


def _wait_for_file(path: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.02)
    return path.read_text().strip()


def test_stop_kills_what_ignores_sigterm_after_the_grace(tmp_path: Path) -> None:
    stubborn = _sh("stubborn", "trap '' TERM; echo ready; while :; do sleep 0.1; done", tmp_path).start()
    stubborn.wait_log(["ready"])
    started = time.monotonic()
    assert stubborn.stop(grace=0.5) == -signal.SIGKILL
    assert time.monotonic() - started >= 0.5
    assert stubborn.stopped and not stubborn.running


def test_kill_reaches_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    parent = _sh("parent", f"sleep 600 & echo $! > {pid_file}; wait", tmp_path).start()
    child = int(_wait_for_file(pid_file))
    assert alive(child)
    parent.kill()
    deadline = time.monotonic() + 5
    while alive(child):  # the grandchild is reparented and reaped by init once killed
        assert time.monotonic() < deadline, "the FFmpeg-like grandchild survived its group's SIGKILL"
        time.sleep(0.02)
    assert parent.returncode == -signal.SIGKILL and not parent.stopped


def test_restart_runs_the_same_command_again(tmp_path: Path) -> None:
    counter = _sh("counter", "echo run; sleep 600", tmp_path).start()
    first = counter.pid
    counter.wait_log(["run"])
    counter.restart(grace=5)
    counter.wait_log([r"run\nrun"])
    assert counter.pid != first and counter.running and not alive(first)
    counter.stop(5)


def test_supervise_restarts_what_crashed_and_not_what_was_stopped(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, database_url="postgresql://unused/none", redis_url="redis://unused:1/0")
    try:
        crashing = cluster.add(_sh("crashing", "echo started; sleep 600", tmp_path))
        stopped = cluster.add(_sh("stopped", "sleep 600", tmp_path))
        crashing.wait_log(["started"])
        stopped.stop(5)
        crashing.kill()
        done = threading.Event()
        supervisor = threading.Thread(target=cluster.supervise, args=(done.is_set, 0.05))
        supervisor.start()
        try:
            deadline = time.monotonic() + 10
            while crashing.text().count("started") < 2:  # wait_log would see the crash before the restart
                assert time.monotonic() < deadline, "the crashed process was not started again"
                time.sleep(0.02)
        finally:
            done.set()
            supervisor.join(10)
        assert crashing.running and not stopped.running
    finally:
        cluster.close(grace=5)
    assert not crashing.running


def test_wait_healthy_fails_at_once_when_a_process_exits_during_start_up(tmp_path: Path) -> None:
    broken = _sh("broken", "echo 'no such setting' >&2; exit 3", tmp_path).start()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"broken exited with code 3 during start-up:\nno such setting"):
        wait_healthy("http://127.0.0.1:9", [broken], timeout=30)
    assert time.monotonic() - started < 10


def test_private_redis_is_flushed_and_restarted_on_its_port(tmp_path: Path) -> None:
    server = Redis(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url)
    try:
        client.set("k", "v")
        server.flush()
        assert client.get("k") is None
        client.set("k", "v")
        first = server.pid
        server.restart()
        assert server.pid != first and not alive(first)
        assert client.get("k") is None and client.ping()  # same URL, a new (empty: no persistence) server
    finally:
        client.close()
        server.stop()
    assert server.process is not None and server.process.poll() is not None


def test_cliplog_command_runs_this_interpreter() -> None:
    from runtime.processes import cliplog_command

    result = subprocess.run(cliplog_command("--help"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "cliplog" in result.stdout and cliplog_command()[0] == sys.executable
