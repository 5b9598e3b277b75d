"""`cliplog dev --demo` as a newcomer sees it: the printed address opens the page signed in, and the demo project
shows clips that succeed, fail for good, and hang, time out and are retried."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import expect

from api.demo import DEMO_ATTEMPT_TIMEOUT, HANGING_SOURCE, demo_environment
from runtime.embedded import free_port
from runtime.processes import Process, cliplog_command, environment_without_cliplog
from runtime.settings import Settings, find_ffmpeg
from tests.ui.conftest import clip_card, screenshot, state_pattern


def test_demo_ffmpeg_wrapper_hangs_once_on_its_source_and_passes_through_otherwise(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, ffmpeg=find_ffmpeg(os.environ))
    env = demo_environment(settings, {})
    assert env["CLIPLOG_ATTEMPT_TIMEOUT"] == DEMO_ATTEMPT_TIMEOUT
    assert "CLIPLOG_ATTEMPT_TIMEOUT" not in demo_environment(settings, {"CLIPLOG_ATTEMPT_TIMEOUT": "600"})
    wrapper = env["CLIPLOG_FFMPEG"]
    assert subprocess.run([wrapper, "-version"], capture_output=True, timeout=30).returncode == 0
    args = [wrapper, "-version", "-i", f"/media/{HANGING_SOURCE}"]
    hanging = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            hanging.wait(1.0)
    finally:
        os.killpg(hanging.pid, 9)
        hanging.wait()
    again = subprocess.run(args, capture_output=True, timeout=30)  # only once: now the real ffmpeg answers
    assert again.returncode == 0 and b"ffmpeg version" in again.stdout


@pytest.mark.ui
@pytest.mark.timeout(150)
def test_dev_demo_opens_signed_in_and_shows_every_outcome(tmp_path: Path, page) -> None:
    port = free_port()
    env = environment_without_cliplog()
    env.update(
        CLIPLOG_DEV_TOKEN="demo-token",
        CLIPLOG_ATTEMPT_TIMEOUT="3",  # the demo's own default is 15 s; set, it is kept
        CLIPLOG_RETRY_BASE="2",
        CLIPLOG_RETRY_MAX="2",
    )
    log = tmp_path / "dev.log"
    command = cliplog_command("dev", "--demo", "--port", str(port), "--data-dir", str(tmp_path / "data"))
    process = Process("cliplog dev --demo", command, env, log).start()
    try:
        process.wait_log(["cliplog is running"], timeout=90)
        text = log.read_text()
        assert "attempts time out after 3 s" in text
        url = re.search(r"open (http://\S+/\?token=\S+)", text).group(1)

        page.goto(url)
        expect(page.get_by_role("heading", name="Your projects")).to_be_visible()
        assert "token=" not in page.url
        page.get_by_role("link", name="demo").click()
        expect(clip_card(page, "Brilliant Pass Run Cross")).to_have_accessible_description(
            state_pattern("Extracted"), timeout=20_000
        )
        expect(clip_card(page, "Goal, frame-accurate")).to_have_accessible_description(
            state_pattern("Extracted"), timeout=20_000
        )
        for name, words in (
            ("From a corrupt upload", "not a video that can be cut"),
            ("Past the end of the match", "lies past the end of the source video"),
        ):
            card = clip_card(page, name)
            expect(card).to_have_accessible_description(state_pattern("Extraction failed"))
            expect(card).to_contain_text(words)
            expect(card.get_by_role("button", name="Retry extraction")).to_be_visible()
        cancelled = clip_card(page, "Cancelled by you")
        expect(cancelled).to_have_accessible_description(state_pattern("Cancelled"))
        expect(cancelled.get_by_role("button", name="Retry extraction")).to_be_visible()
        hung = clip_card(page, "Slow-motion replay (hangs once)")
        expect(hung).to_have_accessible_description(state_pattern("Extracted"), timeout=30_000)
        hung.get_by_role("link").click()
        attempts = page.get_by_role("region", name="Slow-motion replay").get_by_role("figure").get_by_role("listitem")
        expect(attempts).to_have_count(2)
        expect(attempts.nth(0)).to_contain_text("timed out after")
        expect(attempts.nth(1)).to_contain_text("(automatic retry): extracted")
        screenshot(page, "demo")
    finally:
        process.stop(60)
    assert process.returncode == 0, log.read_text()[-3000:]
