"""`cliplog dev --demo` as a newcomer sees it: the printed address opens the page signed in, and the demo project
shows clips that succeed, fail for good, and hang, time out and are retried."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from api.demo import DEMO_ATTEMPT_TIMEOUT, HANGING_SOURCE, demo_environment
from runtime.settings import Settings, find_ffmpeg
from tests.e2e.system import cliplog_command, free_port, start, stop
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPLOG_")}
    env.update(
        CLIPLOG_DEV_TOKEN="demo-token",
        CLIPLOG_ATTEMPT_TIMEOUT="3",  # the demo's own default is 15 s; set, it is kept
        CLIPLOG_RETRY_BASE="2",
        CLIPLOG_RETRY_MAX="2",
    )
    log = tmp_path / "dev.log"
    process = start(cliplog_command("dev", "--demo", "--port", str(port), "--data-dir", str(tmp_path / "data")), env, log)
    try:
        deadline = time.monotonic() + 90
        while "cliplog is running" not in log.read_text(errors="replace"):
            assert process.poll() is None, f"cliplog dev exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"cliplog dev did not start:\n{log.read_text()}"
            time.sleep(0.2)
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
        hung = clip_card(page, "Slow-motion replay (hangs once)")
        expect(hung).to_have_accessible_description(state_pattern("Extracted"), timeout=30_000)
        hung.get_by_role("link").click()
        attempts = page.get_by_role("region", name="Slow-motion replay").get_by_role("figure").get_by_role("listitem")
        expect(attempts).to_have_count(2)
        expect(attempts.nth(0)).to_contain_text("timed out after")
        expect(attempts.nth(1)).to_contain_text("(automatic retry): extracted")
        screenshot(page, "demo")
    finally:
        stop(process, timeout=60)
    assert process.returncode == 0, log.read_text()[-3000:]
