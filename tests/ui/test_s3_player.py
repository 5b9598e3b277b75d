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


def open_when_extracted(cluster: S3UiCluster, page, name: str):  # noqa: ANN001, ANN201 - Playwright locators
    """The project's page, once the clip `name` shows extracted: its panel opened, and the panel's video."""
    page.goto(cluster.url(f"/projects/{PROJECT}"))
    card = clip_card(page, name)
    expect(card).to_have_accessible_description(state_pattern("Extracted"), timeout=60_000)
    card.get_by_role("link", name=name).click()
    panel = page.get_by_role("region", name=name)
    return panel, panel.get_by_label(f"Video of {name}")


def test_the_player_loads_and_plays_a_clip_from_the_bucket(cluster: S3UiCluster, page) -> None:
    response = cluster.api.register(PROJECT, clip_id="pass", source="games/match.mp4", start=5.0, end=9.0,
                                    mode="accurate", name="Brilliant pass")  # fmt: skip
    assert response.status_code == 201, response.text

    panel, video = open_when_extracted(cluster, page, "Brilliant pass")
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


@pytest.mark.parametrize("cluster", ["redirect"], indirect=True)
def test_an_expired_link_is_renewed_and_a_refused_one_is_reported_once(cluster: S3UiCluster, page) -> None:
    """moto does not expire presigned URLs, so the bucket's answer to an expired one (403) is played by Playwright:
    a link that played and then gets 403 is renewed, the video goes on; a fresh link refused before it ever
    loaded is reported, and no further link is asked for."""
    response = cluster.api.register(PROJECT, clip_id="pass", source="games/match.mp4", start=5.0, end=9.0,
                                    name="Brilliant pass")  # fmt: skip
    assert response.status_code == 201, response.text
    links: list[str] = []
    page.on("request", lambda request: links.append(request.url) if request.url.endswith("/file-link") else None)
    refusing = {"from": None}  # refuse the bucket's answers once this many links were asked for

    def bucket(route) -> None:  # noqa: ANN001
        if refusing["from"] is not None and len(links) <= refusing["from"]:
            route.fulfill(status=403, content_type="application/xml", body="<Error><Code>AccessDenied</Code>"
                          "<Message>Request has expired</Message></Error>")  # fmt: skip
        else:
            route.continue_()

    page.route(f"{cluster.server.endpoint}/**", bucket)
    panel, video = open_when_extracted(cluster, page, "Brilliant pass")
    page.wait_for_function("v => v.readyState >= 2", arg=video.element_handle(), timeout=20_000)
    assert len(links) == 1, links

    refusing["from"] = 1  # the first link "expires": the bucket refuses it, a second link is served
    video.evaluate("v => v.load()")
    page.wait_for_function("v => v.readyState >= 2 && !v.error", arg=video.element_handle(), timeout=20_000)
    assert len(links) == 2, links
    expect(panel.get_by_text("could not be loaded from storage")).to_have_count(0)

    refusing["from"] = 99  # every link refused: the renewed one never loads, the page says so and stops asking
    video.evaluate("v => v.load()")
    expect(panel.get_by_text("The video could not be loaded from storage.")).to_be_visible(timeout=20_000)
    assert len(links) == 3, links
    page.wait_for_function("v => v.error !== null", arg=video.element_handle())
    assert len(links) == 3, links
