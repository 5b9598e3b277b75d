"""Live progress and stall detection with real processes and a real FFmpeg: two `cliplog serve` instances, a
worker whose FFmpeg reads its input at the video's own pace (`-re`, through a CLIPLOG_FFMPEG wrapper) so a cut lasts
seconds, and WebSocket clients of both instances."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.faults.conftest import Cluster
from tests.feed_support import open_socket, ws_url

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120)]

PROGRESS_KEYS = {"type", "project_id", "clip_id", "run", "attempt", "percent", "eta_seconds"}
REAL_TIME = 'exec "$REAL" -re "$@"\n'  # FFmpeg reads the source at its frame rate: a 4 s clip takes about 4 s


async def _read_until_completed(ws: ClientConnection, clip_id: str, log: list[tuple[float, dict]]) -> None:
    while True:
        async with asyncio.timeout(30):
            message = json.loads(await ws.recv())
        log.append((time.monotonic(), message))
        if message["type"] == "event" and message["event"]["clip_id"] == clip_id:
            if message["event"]["type"] == "extraction.completed":
                return


def _events(log: list[tuple[float, dict]]) -> list[dict]:
    return [m["event"] for _, m in log if m["type"] == "event"]


def _progress(log: list[tuple[float, dict]]) -> list[tuple[float, dict]]:
    return [(t, m) for t, m in log if m["type"] == "progress"]


def test_progress_rises_to_100_on_every_instance_without_a_cursor_and_a_resumed_client_misses_no_event(
    cluster: Cluster,
) -> None:
    first = cluster.serve()
    second = cluster.serve()
    cluster.worker(CLIPLOG_FFMPEG=cluster.wrapper("real-time", REAL_TIME), CLIPLOG_ATTEMPT_TIMEOUT="60")
    clip = {"clip_id": "live", "source": "games/match.mp4", "start": 5.0, "end": 9.0, "mode": "accurate"}
    project = "progress"

    async def scenario() -> tuple[list, list, list, list[dict]]:
        throughout: list[tuple[float, dict]] = []  # first instance, connected from before the clip to its end
        other: list[tuple[float, dict]] = []  # second instance, connected throughout too
        resumed: list[tuple[float, dict]] = []  # second instance: leaves at the first progress, comes back later
        views: list[dict] = []  # GET clip while it runs
        headers = first.http.headers
        async with httpx.AsyncClient(base_url=first.base_url, headers=headers) as http:
            cursor = (await http.get("/api/events", params={"after": "latest"})).json()["next_cursor"]
            async with (
                await open_socket(ws_url(first.base_url.replace("http", "ws"), cluster.token, after=cursor)) as a,
                await open_socket(ws_url(second.base_url.replace("http", "ws"), cluster.token, after=cursor)) as b,
            ):
                response = await http.post(f"/api/clips/projects/{project}/clips", json=clip)
                assert response.status_code == 201, response.text
                readers = [
                    asyncio.create_task(_read_until_completed(a, "live", throughout)),
                    asyncio.create_task(_read_until_completed(b, "live", other)),
                ]
                leaving = await open_socket(ws_url(second.base_url.replace("http", "ws"), cluster.token, after=cursor))
                last_cursor = cursor
                while True:
                    async with asyncio.timeout(30):
                        message = json.loads(await leaving.recv())
                    resumed.append((time.monotonic(), message))
                    if message["type"] == "event":
                        last_cursor = message["event"]["cursor"]
                    if message["type"] == "progress":
                        break
                await leaving.close()
                while not all(r.done() for r in readers):
                    view = (await http.get(f"/api/clips/projects/{project}/clips/live")).json()
                    views.append(view)
                    await asyncio.sleep(0.2)
                await asyncio.gather(*readers)
                async with await open_socket(
                    ws_url(second.base_url.replace("http", "ws"), cluster.token, after=last_cursor)
                ) as back:
                    await _read_until_completed(back, "live", resumed)
            done = (await http.get(f"/api/clips/projects/{project}/clips/live")).json()
        return throughout, other, resumed, views + [done]

    throughout, other, resumed, views = asyncio.run(scenario())

    for log in (throughout, other):
        progress = [m for _, m in _progress(log) if m["clip_id"] == "live"]
        assert len(progress) >= 3, progress  # a 4 s cut, written once a second
        assert all(set(m) == PROGRESS_KEYS for m in progress), progress  # no cursor, no position
        percents = [m["percent"] for m in progress]
        assert percents == sorted(percents) and percents[-1] == 100.0, percents
        assert 0 <= percents[0] < 100
        assert {(m["project_id"], m["run"], m["attempt"]) for m in progress} == {(project, 1, 1)}
        assert progress[-1]["eta_seconds"] == 0 and all(m["eta_seconds"] is None or m["eta_seconds"] >= 0 for m in progress)
        arrivals = [t for t, m in _progress(log) if m["clip_id"] == "live" and m["percent"] < 100]
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        assert all(gap > 0.9 for gap in gaps), gaps  # at most once a second (FFmpeg reports every 0.5 s)
    # Every instance got the same events, and the client that left and resumed from its cursor got them too.
    assert _events(throughout) == _events(other) == _events(resumed)
    assert [e["type"] for e in _events(throughout) if e["clip_id"] == "live"] == [
        "extraction.requested", "extraction.started", "extraction.completed"
    ]
    caught_up = [m for _, m in throughout if m["type"] == "caught_up"]
    assert len(caught_up) == 1 and caught_up[0]["cursor"]
    # GET clip: progress only while running, with its speed and when it was written.
    running = [v for v in views if v["status"] == "running" and v["progress"] is not None]
    assert running, [(v["status"], v["progress"]) for v in views]
    assert set(running[0]["progress"]) == {"percent", "speed", "eta_seconds", "updated_at"}
    assert all(v["progress"] is None for v in views if v["status"] != "running")
    assert views[-1]["status"] == "completed" and views[-1]["progress"] is None
    assert [v["progress"]["percent"] for v in running] == sorted(v["progress"]["percent"] for v in running)
    cluster.check_log()


# The first run of the cut reads the source at its own pace for 1.5 s, then FFmpeg is frozen (SIGSTOP): it keeps
# running, and says nothing more. The next run is the real FFmpeg.
FREEZE_ONCE = """
if [ ! -e "$STATE/frozen" ]; then
  : > "$STATE/frozen"
  "$REAL" -re "$@" &
  child=$!
  sleep 1.5
  kill -STOP "$child"
  wait "$child"
  exit 1
fi
exec "$REAL" "$@"
"""


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_an_ffmpeg_that_stops_reporting_is_timed_out_as_stalled_long_before_its_deadline_and_retried(
    cluster: Cluster,
) -> None:
    stall_after = 2.0
    api = cluster.serve()
    cluster.worker(
        CLIPLOG_FFMPEG=cluster.wrapper("freeze", FREEZE_ONCE),
        CLIPLOG_ATTEMPT_TIMEOUT="60",
        CLIPLOG_STALL_AFTER=str(stall_after),
    )
    response = api.register("stall", clip_id="frozen", source="games/match.mp4", start=5.0, end=15.0, mode="accurate")
    assert response.status_code == 201, response.text
    clip = api.wait_for("stall", ["frozen"], timeout=60)["frozen"]
    assert clip["status"] == "completed" and clip["attempt"] == 2, clip
    history = api.history("stall", "frozen")
    timed_out = [e for e in history if e["type"] == "extraction.timed_out"]
    assert len(timed_out) == 1, history
    data = timed_out[0]["data"]
    assert (data["detected_by"], data["reason"], data["attempt"]) == ("worker", "stalled", 1), data
    # No progress since about 1.5 s into the cut, so stopped about STALL_AFTER later: long before the 60 s deadline.
    assert 1.5 + stall_after - 0.5 <= data["elapsed_seconds"] < 15, data
    started = next(e for e in history if e["type"] == "extraction.started" and e["data"]["attempt"] == 1)
    assert (_time(data["deadline_at"]) - _time(started["recorded_at"])).total_seconds() > 50
    retried = [e for e in history if e["type"] == "extraction.requested" and e["data"]["reason"] == "auto_retry"]
    assert len(retried) == 1 and timed_out[0]["clip_status"] == "retrying"
    assert not list((cluster.root / "clips").glob("*/.tmp-*")), "temporary files left behind"
    cluster.check_log()
