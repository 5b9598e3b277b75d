"""For end-to-end, fault and browser tests: an HTTP client that speaks the API, and a test video. The processes
themselves are started by `runtime.processes`."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import httpx

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = ("completed", "failed")


class Api:
    """A small synchronous client for one cliplog API instance."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def close(self) -> None:
        self.http.close()

    def register(self, project: str, **body: Any) -> httpx.Response:
        return self.http.post(f"/api/clips/projects/{project}/clips", json=body)

    def clip(self, project: str, clip_id: str) -> dict:
        response = self.http.get(f"/api/clips/projects/{project}/clips/{clip_id}")
        response.raise_for_status()
        return response.json()

    def clips(self, project: str) -> list[dict]:
        response = self.http.get(f"/api/clips/projects/{project}/clips")
        response.raise_for_status()
        return response.json()

    def history(self, project: str, clip_id: str) -> list[dict]:
        response = self.http.get(f"/api/clips/projects/{project}/clips/{clip_id}/events")
        response.raise_for_status()
        return response.json()

    def retry(self, project: str, clip_id: str) -> httpx.Response:
        return self.http.post(f"/api/clips/projects/{project}/clips/{clip_id}/retry-extraction")

    def cancel(self, project: str, clip_id: str) -> httpx.Response:
        return self.http.post(f"/api/clips/projects/{project}/clips/{clip_id}/cancel")

    def wait_for(
        self,
        project: str,
        clip_ids: Iterable[str],
        until: Callable[[dict], bool] = lambda clip: clip["status"] in TERMINAL,
        timeout: float = 60,
    ) -> dict[str, dict]:
        """Poll until every clip satisfies `until`; return the clips. Fails with the last states seen."""
        wanted = set(clip_ids)
        deadline = time.monotonic() + timeout
        seen: dict[str, dict] = {}
        while True:
            try:
                seen = {c["clip_id"]: c for c in self.clips(project) if c["clip_id"] in wanted}
            except (httpx.HTTPError, ValueError):
                seen = seen  # the API may be briefly unavailable in fault tests
            if len(seen) == len(wanted) and all(until(c) for c in seen.values()):
                return seen
            if time.monotonic() > deadline:
                states = {k: (v["status"], v["attempt"], v.get("last_error")) for k, v in seen.items()}
                raise AssertionError(f"clips did not reach the expected state within {timeout:g} s: {states}")
            time.sleep(0.1)


def make_video(ffmpeg: str, target: Path, seconds: float = 30, gop: int = 25) -> Path:
    """A test source: a moving test pattern with a tone, one keyframe a second."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-g", str(gop),
            "-c:a", "aac", "-shortest", "-f", "mp4", str(target),
        ],
        check=True,
    )
    return target


__all__ = ["ROOT", "TERMINAL", "Api", "make_video"]
