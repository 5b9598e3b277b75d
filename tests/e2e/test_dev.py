"""`cliplog dev` as a newcomer runs it: embedded PostgreSQL and Redis, a worker, the API, over real HTTP."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from handlers.ffmpeg import probe
from runtime.embedded import free_port
from runtime.processes import Process, cliplog_command, environment_without_cliplog
from runtime.settings import find_ffmpeg, find_ffprobe
from tests.e2e.system import Api, make_video

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("dev")
    ffmpeg = find_ffmpeg(os.environ)
    make_video(ffmpeg, data_dir / "media" / "games" / "match.mp4", seconds=30)
    port = free_port()
    env = {**environment_without_cliplog(), "CLIPLOG_DEV_TOKEN": "e2e-dev-token"}
    log = data_dir / "dev.log"
    process = Process("cliplog dev", cliplog_command("dev", "--port", str(port), "--data-dir", str(data_dir)), env, log)
    process.start().wait_log(["cliplog is running"], timeout=90)
    api = Api(f"http://127.0.0.1:{port}", "e2e-dev-token")
    yield api, data_dir, log, process
    api.close()
    process.stop(60)


def _duration(path: Path) -> float:
    info = asyncio.run(probe(path, ffmpeg=find_ffmpeg(os.environ), ffprobe=find_ffprobe(os.environ)))
    assert info.has_video
    return info.duration


def test_prints_an_address_with_a_token(dev) -> None:
    api, _, log, _ = dev
    match = re.search(r"open (http://\S+)/\?token=(\S+)", log.read_text())
    assert match and match.group(2) == "e2e-dev-token"
    assert httpx.get(match.group(1) + "/", timeout=10).status_code == 200


@pytest.mark.parametrize(("mode", "start", "end", "tolerance"), [("copy", 10.0, 20.0, 1.5), ("accurate", 3.3, 7.1, 0.5)])
def test_register_extract_download(dev, tmp_path: Path, mode: str, start: float, end: float, tolerance: float) -> None:
    api, _, _, _ = dev
    clip_id = f"e2e-{mode}"
    response = api.register("p-e2e", clip_id=clip_id, source="games/match.mp4", start=start, end=end, mode=mode)
    assert response.status_code == 201, response.text
    clip = api.wait_for("p-e2e", [clip_id], timeout=90)[clip_id]
    assert clip["status"] == "completed", clip
    download = api.http.get(clip["file_url"])
    assert download.status_code == 200 and download.headers["content-type"] == "video/mp4"
    target = tmp_path / "clip.mp4"
    target.write_bytes(download.content)
    assert abs(_duration(target) - (end - start)) <= tolerance
    partial = api.http.get(clip["file_url"], headers={"Range": "bytes=0-99"})
    assert partial.status_code == 206 and len(partial.content) == 100 and partial.content == download.content[:100]
    types = [e["type"] for e in api.history("p-e2e", clip_id)]
    assert types == ["extraction.requested", "extraction.started", "extraction.completed"]


def test_dev_stops_everything_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "dev.log"
    command = cliplog_command("dev", "--port", str(port), "--data-dir", str(tmp_path / "data"))
    process = Process("cliplog dev", command, environment_without_cliplog(), log).start()
    process.wait_log(["cliplog is running"], timeout=90)
    process.stop(60)
    assert process.returncode == 0, log.read_text()

    def leftovers() -> list[str]:
        return subprocess.run(["pgrep", "-f", str(tmp_path / "data")], capture_output=True, text=True).stdout.split()

    # `pg_ctl -w stop` (pgserver, at dev's exit) returns once the postmaster removed its pid file, a moment before
    # the process itself is gone: wait for the processes to go, with a deadline, rather than a fixed second.
    deadline = time.monotonic() + 10
    while (left := leftovers()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], f"processes left running: {left}"


def test_dev_refuses_a_port_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            cliplog_command("dev", "--port", str(port), "--data-dir", str(tmp_path / "data")),
            env=environment_without_cliplog(), capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 1 and f"port {port}" in result.stderr and "in use" in result.stderr
