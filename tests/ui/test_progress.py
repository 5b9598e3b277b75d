"""Live progress in a real browser against real processes: pending clips say where they are in the queue, a running
clip's progress bar (found by its role and name) moves with FFmpeg's reports and goes when the clip is extracted, and
the header says when the page is up to date."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import UiCluster, clip_card, screenshot, state_pattern

pytestmark = [pytest.mark.ui, pytest.mark.timeout(120)]

PROJECT = "progress"


def test_the_progress_bar_moves_and_pending_clips_show_their_place_in_the_queue(cluster: UiCluster, page) -> None:
    cluster.add_media("games/real-time.mp4")
    api = cluster.serve_ui()
    clips = {
        "long": {"source": "games/real-time.mp4", "start": 2.0, "end": 8.0, "mode": "accurate", "name": "Long cut"},
        "next": {"source": "games/match.mp4", "start": 5.0, "end": 9.0, "name": "Next one"},
        "last": {"source": "games/match.mp4", "start": 10.0, "end": 14.0, "name": "Last one"},
    }
    for clip_id, body in clips.items():
        response = api.register(PROJECT, clip_id=clip_id, **body)
        assert response.status_code == 201, response.text

    page.goto(cluster.url(f"/projects/{PROJECT}"))
    expect(page.get_by_role("status", name="Sync")).to_have_text("Up to date")  # the feed's caught_up
    long, next_one, last = (clip_card(page, body["name"]) for body in clips.values())
    expect(long).to_have_accessible_description(state_pattern("Waiting for extraction Next in the queue"))
    expect(next_one).to_have_accessible_description(state_pattern("Waiting for extraction 1 clip ahead of it in the queue"))
    expect(last).to_have_accessible_description(state_pattern("Waiting for extraction 2 clips ahead of it in the queue"))
    expect(long.get_by_role("progressbar")).to_have_count(0)  # hidden while pending
    screenshot(page, "queue")

    cluster.ui_worker(concurrency=1, CLIPLOG_ATTEMPT_TIMEOUT="60")  # one clip at a time: the long cut first
    bar = long.get_by_role("progressbar", name="Extraction progress")
    expect(bar).to_be_visible(timeout=15_000)
    expect(long).to_have_accessible_description(re.compile(r"^Extracting… \d:\d\d"))
    # The others moved up when the long cut started.
    expect(next_one).to_have_accessible_description(state_pattern("Waiting for extraction Next in the queue"))
    expect(last).to_have_accessible_description(state_pattern("Waiting for extraction 1 clip ahead of it in the queue"))
    handle = bar.element_handle()
    page.wait_for_function("bar => bar.value > 0 && bar.value < 100", arg=handle, timeout=15_000)
    first = page.evaluate("bar => bar.value", handle)
    page.wait_for_function("([bar, first]) => bar.value > first", arg=[handle, first], timeout=15_000)
    expect(bar).to_have_attribute("aria-valuetext", re.compile(r"^\d+%( · about \d+s left)?$"))
    expect(long).to_contain_text(re.compile(r"\d+%"))
    screenshot(page, "progress")
    assert page.evaluate("window.cliplogDebug.progress") >= 2  # live messages, not only the first GET

    expect(long).to_have_accessible_description(state_pattern("Extracted"), timeout=30_000)
    expect(long.get_by_role("progressbar")).to_have_count(0)
    for card in (next_one, last):
        expect(card).to_have_accessible_description(state_pattern("Extracted"), timeout=30_000)
    expect(page.get_by_role("status", name="Sync")).to_have_text("Up to date")
    assert page.evaluate("window.cliplogDebug.caughtUp") >= 1
