"""The player with S3 storage, in Chromium, both ways the file route can serve (`CLIPLOG_S3_SERVE`):

- `redirect` (the default): the page asks `GET .../file-link` for the presigned URL and the <video> reads the
  bucket itself (another origin: no CORS, no token, ranges by the browser);
- `proxy`: the page fetches the bytes through the API with its token and plays them from a blob URL.

Either way the clip, cut by a real worker from a source in the bucket (moto's S3 server, `tests/s3server.py`),
loads, has the clip's duration and plays; the add-clip form offers the bucket's videos.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Iterator

import asyncpg
import pytest
from playwright.sync_api import expect

from api.auth import create_token
from runtime import processes
from tests.e2e.s3system import base_env, new_bucket, s3_env
from tests.e2e.system import Api
from tests.s3server import S3Server
from tests.ui.conftest import UI_ENV, clip_card, screenshot, state_pattern

pytestmark = [pytest.mark.ui, pytest.mark.timeout(150)]

PROJECT = "s3-player"


class S3UiCluster:
    def __init__(self, root: Path, database_url: str, server: S3Server, source: Path, serve: str) -> None:
        self.serve_mode = serve
        self.server = server
        self.bucket = new_bucket(server, "ui")
        server.put_object(self.bucket, "sources/games/match.mp4", source)
        server.put_object(self.bucket, "sources/games/second-half.mp4", source)

        async def token() -> str:
            conn = await asyncpg.connect(database_url)
            try:
                return await create_token(conn, "alice")
            finally:
                await conn.close()

        self.token = asyncio.run(token())
        self.cluster = processes.Cluster(root, database_url=database_url, base_env=base_env(), env=UI_ENV)
        try:
            env = s3_env(server, self.bucket, serve)
            process = self.cluster.serve("serve", CLIPLOG_DATA_DIR=str(root / "api"), **env)
            self.api = Api(process.url, self.token)
            self.cluster.worker(CLIPLOG_DATA_DIR=str(root / "worker"), **env)
        except BaseException:
            self.cluster.close()
            raise

    def url(self, fragment: str) -> str:
        return f"{self.api.base_url}/?token={self.token}#{fragment}"

    def logs(self) -> str:
        return self.cluster.logs()

    def close(self) -> None:
        self.api.close()
        self.cluster.close()


@pytest.fixture(params=["redirect", "proxy"])
def cluster(  # the name the `browser` fixture sets up before Playwright starts (Playwright forbids asyncio)
    request: pytest.FixtureRequest, tmp_path: Path, ui_database_url: str, s3_server: S3Server, source_video: Path
) -> Iterator[S3UiCluster]:
    s3_server.gate.open()
    system = S3UiCluster(tmp_path, ui_database_url, s3_server, source_video, request.param)
    try:
        yield system
    finally:
        system.close()


def test_the_player_loads_and_plays_a_clip_from_the_bucket(cluster: S3UiCluster, page) -> None:
    response = cluster.api.register(PROJECT, clip_id="pass", source="games/match.mp4", start=5.0, end=9.0,
                                    mode="accurate", name="Brilliant pass")  # fmt: skip
    assert response.status_code == 201, response.text

    page.goto(cluster.url(f"/projects/{PROJECT}"))
    card = clip_card(page, "Brilliant pass")
    expect(card).to_have_accessible_description(state_pattern("Extracted"), timeout=60_000)
    card.get_by_role("link", name="Brilliant pass").click()
    panel = page.get_by_role("region", name="Brilliant pass")
    video = panel.get_by_label("Video of Brilliant pass")
    expect(video).to_be_visible()
    page.wait_for_function("v => v.readyState >= 2 && v.duration > 0", arg=video.element_handle(), timeout=20_000)
    duration = video.evaluate("v => v.duration")
    assert abs(duration - 4.0) < 0.6, duration
    source = video.evaluate("v => v.currentSrc")
    if cluster.serve_mode == "redirect":  # the bucket's presigned URL, played directly
        assert source.startswith(f"{cluster.server.endpoint}/{cluster.bucket}/clips/"), source
        assert "X-Amz-Signature=" in source
        expect(panel.get_by_role("link", name="Open the clip")).to_have_attribute("href", source)
    else:  # the bytes through the API, with the token
        assert source.startswith("blob:"), source
        expect(panel.get_by_role("link", name="Download the clip")).to_have_attribute("download", "pass.mp4")
    video.evaluate("v => { v.muted = true; return v.play(); }")
    page.wait_for_function("v => v.currentTime > 0.3 && !v.paused", arg=video.element_handle(), timeout=15_000)
    video.evaluate("v => { v.pause(); v.currentTime = 3.5; }")  # a seek: another range read
    page.wait_for_function("v => !v.seeking && v.readyState >= 2", arg=video.element_handle(), timeout=15_000)
    screenshot(page, f"s3-player-{cluster.serve_mode}")

    # The add-clip form offers the bucket's videos.
    page.get_by_role("navigation", name="Clips").get_by_role("button", name="Add a clip").click()
    dialog = page.get_by_role("dialog", name="Add a clip")
    options = dialog.get_by_label("Source video").locator("option")
    expect(options).to_have_text([re.compile("Choose a video"), "games/match.mp4", "games/second-half.mp4"])
