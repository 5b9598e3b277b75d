"""Following one clip from the POST to FFmpeg and back out through the WebSocket feed, no call climbs a layer (the
layers of tests/unit/test_layers.py). The import graph cannot see a callback that carries a caller's concern down a
layer (as `after_append` once did, from the API and the worker into the event log): a trace of the calls can.

The trace records, for every call into a project module, the nearest project module up the stack (library frames
in between, such as asyncpg or Litestar, are skipped): a call whose callee is in a higher layer than its caller is
a climb."""

from __future__ import annotations

import asyncio

import json
import subprocess
import sys
import threading
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import httpx
from arq.constants import default_queue_name, job_key_prefix
from websockets.asyncio.client import connect

from handlers import reactor, worker
from runtime.bootstrap import open_services
from tests.inprocess import InProcessServer
from tests.unit.test_layers import PACKAGES, ROOT, layer_of

class CallTrace:
    """`sys.settrace` for this thread and the threads started while it is installed; calls only, no lines."""

    def __init__(self) -> None:
        self.active = False
        self.calls: set[tuple[str, str]] = set()
        self.modules: set[str] = set()
        self._names: dict[CodeType, str | None] = {}

    def module_of(self, code: CodeType) -> str | None:
        if code not in self._names:
            path = Path(code.co_filename)
            inside = path.is_relative_to(ROOT) and path.relative_to(ROOT).parts[0] in PACKAGES and path.suffix == ".py"
            self._names[code] = ".".join(path.relative_to(ROOT).with_suffix("").parts) if inside else None
        return self._names[code]

    def __call__(self, frame: FrameType, event: str, _arg: Any) -> None:
        if not self.active or event != "call":
            return None
        callee = self.module_of(frame.f_code)
        if callee is None:
            return None
        self.modules.add(callee)
        caller = frame.f_back
        while caller is not None and self.module_of(caller.f_code) is None:
            caller = caller.f_back
        if caller is not None and (name := self.module_of(caller.f_code)) not in (None, callee):
            self.calls.add((name, callee))  # type: ignore[arg-type]
        return None

    def install(self) -> None:
        threading.settrace(self)
        sys.settrace(self)

    def remove(self) -> None:
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]


async def test_one_clip_from_the_post_to_ffmpeg_and_back_never_climbs_a_layer(
    database_url, api_env, make_user, ids, tmp_path
):
    user, token = await make_user()
    project, clip = ids.project(), ids.clip()
    media = tmp_path / "media"
    media.mkdir()
    env = api_env(database_url, CLIPLOG_MEDIA_ROOT=str(media), CLIPLOG_OUTPUT_ROOT=str(tmp_path / "clips"))
    trace = CallTrace()
    trace.install()
    try:
        server = InProcessServer(env).start()
        settings = server.settings
        subprocess.run(
            [settings.ffmpeg, "-loglevel", "error", "-nostdin", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
             "-t", "4", "-c:v", "libx264", "-g", "25", str(media / "v.mp4")],
            check=True,
        )
        services = await open_services(settings)
        job = (await reactor.job_queue(services.pool)).job_id(project, clip, 1, 1)
        try:
            async with connect(f"{server.ws_url}/api/events/ws?token={token}") as ws:
                trace.active = True
                async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as http:
                    response = await http.post(
                        f"/api/clips/projects/{project}/clips",
                        json={"clip_id": clip, "source": "v.mp4", "start": 1.0, "end": 3.0},
                    )
                assert response.status_code == 201, response.text
                await reactor.react_once(services)
                context = {"services": services, "worker_id": "tracer", "shutting_down": asyncio.Event()}
                assert await worker.extract_job(context, project, clip, 1, 1) == "complete"
                types = []
                while "extraction.completed" not in types:
                    message = json.loads(await ws.recv())
                    if message["type"] == "event" and message["event"]["clip_id"] == clip:
                        types.append(message["event"]["type"])
                trace.active = False
            assert types == ["extraction.requested", "extraction.started", "extraction.completed"]
        finally:
            await services.redis.zrem(default_queue_name, job)  # the job ran here, not in a worker: leave no trace
            await services.redis.delete(job_key_prefix + job)
            await services.close()
            server.stop()
    finally:
        trace.remove()

    # The trace saw the whole way: the route, the use case, the job, FFmpeg's adapter, the broker, the socket.
    assert {"api.clips", "usecases.clips", "handlers.reactor", "handlers.extraction", "handlers.ffmpeg",
            "eventlog.store", "eventlog.broker", "api.feed"} <= trace.modules, sorted(trace.modules)
    assert ("api.clips", "usecases.clips") in trace.calls and ("usecases.clips", "eventlog.store") in trace.calls
    climbs = sorted(f"{a} -> {b}" for a, b in trace.calls if layer_of(b) > layer_of(a))
    assert climbs == []
