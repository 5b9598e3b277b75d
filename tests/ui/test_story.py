"""A clip's "Step through history" and "Download history" in a real browser against real processes, found by role and
name: the slider steps over the clip's events and shows, after each, the state and the reason the story route gives
(domain/story.py); "Download history" saves the clip's export file."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from eventlog import export
from tests.ui.conftest import UiCluster, clip_card, screenshot, state_pattern

pytestmark = [pytest.mark.ui, pytest.mark.timeout(120)]

BROKEN = b"not a video, just bytes\n" * 256


def test_step_through_a_clips_history_and_download_it(cluster: UiCluster, page, tmp_path) -> None:
    project = "story"
    cluster.add_media("games/broken.mp4", BROKEN)
    api = cluster.serve_ui()
    cluster.ui_worker()
    body = {"source": "games/broken.mp4", "start": 0.0, "end": 4.0, "name": "Broken"}
    assert api.register(project, clip_id="broken", **body).status_code == 201
    assert api.wait_for(project, ["broken"])["broken"]["status"] == "failed"
    story = api.http.get(f"/api/clips/projects/{project}/clips/broken/story").json()
    assert [s["because"] for s in story] == ["registered", "running", "not_retryable"]

    page.goto(cluster.url(f"/projects/{project}"))
    card = clip_card(page, "Broken")
    expect(card).to_have_accessible_description(state_pattern("Extraction failed"))
    card.get_by_role("link", name="Broken").click()
    panel = page.get_by_role("region", name="Broken")
    history = panel.get_by_role("region", name="Step through history")
    slider = history.get_by_role("slider", name="Step through history")
    expect(slider).to_have_value("3")  # the newest event first
    expect(history).to_contain_text("Event 3 of 3")
    expect(history).to_contain_text("Then: failed, attempt 1 of")
    expect(history).to_contain_text(f"Why: {story[2]['reason']}")

    slider.focus()
    page.keyboard.press("Home")
    expect(slider).to_have_value("1")
    expect(history).to_contain_text("Event 1 of 3")
    expect(history).to_contain_text("extraction.requested (version 1)")
    expect(history).to_contain_text("Then: pending, attempt 1 of")
    expect(history).to_contain_text(f"Why: {story[0]['reason']}")
    page.keyboard.press("ArrowRight")
    expect(slider).to_have_value("2")
    expect(history).to_contain_text("Event 2 of 3")
    expect(history).to_contain_text("Then: running")
    expect(history).to_contain_text(f"Why: {story[1]['reason']}")
    expect(slider).to_have_attribute("aria-valuetext", re.compile(r"^Event 2 of 3: extraction\.started"))
    screenshot(page, "step-through-history")

    with page.expect_download() as download_info:
        history.get_by_role("button", name="Download history").click()
    download = download_info.value
    assert download.suggested_filename == f"{project}-broken.cliplog.jsonl"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    header, events = export.read(saved)
    assert header.selection == export.Selection(project_id=project, clip_id="broken")
    assert [e.position for e in events] == [s["position"] for s in story]
