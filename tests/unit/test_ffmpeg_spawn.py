"""An FFmpeg run dies with its worker, whichever way the PR_SET_PDEATHSIG is set: by the `setpriv` prefix (vfork,
the fast path) or by a `preexec_fn` (fork) where there is no such prefix; and the prefix changes nothing a caller
sees (the pid is the process's own, its exit status and output are the command's)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

from handlers import ffmpeg
from tests.proc import alive

LINUX = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")

# A parent that starts `sleep 60` through run_process, says its pid, and waits to be killed.
PARENT = textwrap.dedent(
    """
    import asyncio, os, sys
    from handlers import ffmpeg
    if sys.argv[1] == "fork":
        ffmpeg.pdeathsig_launcher = lambda: None
    async def main():
        child = asyncio.create_task(ffmpeg.run_process(["sh", "-c", "echo $$; exec sleep 60"], 120))
        await asyncio.sleep(60)
    asyncio.run(main())
    """
)


def _child_of(parent: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in map(int, Path(f"/proc/{parent}/task/{parent}/children").read_text().split()):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep"):
                    return pid
            except FileNotFoundError:
                continue
        time.sleep(0.02)
    raise TimeoutError("the parent started no child")


@LINUX
@pytest.mark.parametrize("how", ["prefix", "fork"])
def test_the_process_dies_with_its_parent_even_by_sigkill(how: str) -> None:
    if how == "prefix" and ffmpeg.pdeathsig_launcher() is None:
        pytest.skip("no setpriv with --pdeathsig here")
    parent = subprocess.Popen([sys.executable, "-c", PARENT, how], cwd=os.getcwd(), start_new_session=True)
    try:
        child = _child_of(parent.pid)
        assert os.getpgid(child) == child  # in its own session, apart from the parent's group
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 5
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(child), "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait()


@LINUX
async def test_the_prefix_keeps_the_commands_pid_status_and_output() -> None:
    if ffmpeg.pdeathsig_launcher() is None:
        pytest.skip("no setpriv with --pdeathsig here")
    result = await ffmpeg.run_process(["sh", "-c", "echo $$ >&2; echo out; kill -9 $$"], 10)
    assert result.returncode == -signal.SIGKILL
    assert result.stdout == b"out\n"
    assert int(result.stderr) > 0  # the shell's own pid: it was exec'd in place, no process in between


@pytest.mark.parametrize("how", ["prefix", "fork"])
async def test_a_missing_binary_fails_to_start_as_exec_would(how: str, tmp_path: Path, monkeypatch) -> None:
    """A missing or non-executable FFmpeg is the worker's problem (`internal`, retried), not the clip's: it must
    not start the launcher and come back as FFmpeg's exit 127 (`ffmpeg_exit`, `not_a_video`...)."""
    if how == "fork":
        monkeypatch.setattr(ffmpeg, "pdeathsig_launcher", lambda: None)
    not_executable = tmp_path / "ffmpeg"
    not_executable.write_text("#!/bin/sh\n")
    for binary in (str(tmp_path / "missing-ffmpeg"), str(not_executable)):
        with pytest.raises(OSError):
            await ffmpeg.run_process([binary, "-version"], 10)


@LINUX
async def test_with_the_pidfd_watcher_a_process_is_waited_for_without_a_thread_of_its_own(tmp_path: Path) -> None:
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):  # before the policy's deprecated calls
        pytest.skip("Python 3.12+ waits through a pidfd by itself, or this system has none")
    policy = asyncio.get_event_loop_policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        before = policy.get_child_watcher()
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    try:
        assert ffmpeg.use_pidfd_child_watcher()
        running = asyncio.create_task(ffmpeg.run_process(["sh", "-c", f"read x < {fifo}; echo $x; exit 3"], 10))
        go = await asyncio.to_thread(open, fifo, "w")  # the process runs (it opened the FIFO)
        waiting = [t.name for t in threading.enumerate() if "waitpid" in t.name]
        go.write("out\n")
        go.close()
        result = await running
        assert (result.returncode, result.stdout) == (3, b"out\n")
        assert waiting == []  # Python 3.11's default watcher has a thread waiting for it meanwhile
    finally:
        policy.set_child_watcher(before)
