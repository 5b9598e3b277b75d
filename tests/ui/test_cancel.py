"""Cancel and "Retry all failed" in a real browser against real processes, found by role and name: a running clip's
"Cancel extraction" turns it into "Cancelled" with a retry; a failed clip's error shows FFmpeg's command and last lines
behind "Details"; the project's "Retry all failed" retries every failed clip and says so."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import UiCluster, clip_card, screenshot, state_pattern

pytestmark = [pytest.mark.ui, pytest.mark.timeout(120)]

BROKEN = b"not a video, just bytes\n" * 256


def test_cancel_a_waiting_and_a_running_clip(cluster: UiCluster, page) -> None:
    project = "cancel"
    cluster.add_media("games/hang-always.mp4")
    api = cluster.serve_ui()
    body = {"source": "games/hang-always.mp4", "start": 1.0, "end": 5.0}
    assert api.register(project, clip_id="waiting", name="Waits", **body).status_code == 201
    page.goto(cluster.url(f"/projects/{project}"))

    # No worker yet: the clip waits, and a person cancels it.
    waiting = clip_card(page, "Waits")
    expect(waiting).to_have_accessible_description(state_pattern("Waiting for extraction"))
    waiting.get_by_role("button", name="Cancel extraction").click()
    expect(waiting).to_have_accessible_description(state_pattern("Cancelled"))
    expect(waiting.get_by_role("button", name="Retry extraction")).to_be_visible()
    assert [e["type"] for e in api.history(project, "waiting")] == ["extraction.requested", "extraction.cancelled"]

    # A worker whose FFmpeg hangs: the next clip runs until a person cancels it.
    cluster.ui_worker(CLIPLOG_ATTEMPT_TIMEOUT="120", CLIPLOG_LEASE_TIMEOUT="60")
    assert api.register(project, clip_id="stuck", name="Hangs", **body).status_code == 201
    stuck = clip_card(page, "Hangs")
    expect(stuck).to_have_accessible_description(re.compile(r"^Extracting…"), timeout=15_000)
    expect(stuck.get_by_role("button", name="Retry extraction")).to_be_hidden()
    stuck.get_by_role("button", name="Cancel extraction").click()
    expect(stuck).to_have_accessible_description(state_pattern("Cancelled"))
    expect(stuck.get_by_role("button", name="Cancel extraction")).to_be_hidden()
    expect(stuck.get_by_role("button", name="Retry extraction")).to_be_visible()
    expect(stuck.locator(".spinner")).to_be_hidden()
    screenshot(page, "cancelled")
    history = [e["type"] for e in api.history(project, "stuck")]
    assert history == ["extraction.requested", "extraction.started", "extraction.cancelled"]
    assert api.clip(project, "waiting")["status"] == "cancelled"  # the worker never started the cancelled one

    # The clip's panel shows the same state, and its timeline says a person cancelled it.
    stuck.get_by_role("link", name="Hangs").click()
    panel = page.get_by_role("region", name="Hangs")
    expect(panel.get_by_role("button", name="Retry extraction")).to_be_visible()
    timeline = panel.get_by_role("figure", name=re.compile("^Timeline"))
    expect(timeline.get_by_role("listitem").nth(0)).to_contain_text("cancelled by a person after")


def test_retry_all_failed_retries_every_failed_clip_and_details_show_what_ffmpeg_said(cluster: UiCluster, page) -> None:
    project = "bulk"
    cluster.add_media("games/broken-1.mp4", BROKEN)
    cluster.add_media("games/broken-2.mp4", BROKEN)
    api = cluster.serve_ui()
    cluster.ui_worker()
    for n in (1, 2):
        body = {"source": f"games/broken-{n}.mp4", "start": 0.0, "end": 4.0, "name": f"Broken {n}"}
        assert api.register(project, clip_id=f"b{n}", **body).status_code == 201
    assert api.register(project, clip_id="good", source="games/match.mp4", start=5.0, end=9.0, name="Good").status_code == 201
    assert {c["status"] for c in api.wait_for(project, ["b1", "b2", "good"]).values()} == {"failed", "completed"}

    page.goto(cluster.url(f"/projects/{project}"))
    sidebar = page.get_by_role("navigation", name="Clips")
    broken = clip_card(page, "Broken 1")
    expect(broken).to_have_accessible_description(state_pattern("Extraction failed"))
    # What FFmpeg was run with and said, behind "Details" (closed at first).
    details = broken.locator("details.state-details")
    expect(details).to_be_visible()
    command = details.locator("code")
    expect(command).to_be_hidden()
    details.locator("summary", has_text="Details").click()
    expect(command).to_be_visible()
    expect(command).to_contain_text("$CLIPLOG_MEDIA_ROOT/games/broken-1.mp4")
    expect(command).not_to_contain_text(str(cluster.root))
    expect(details.locator("pre.details-stderr")).to_contain_text("Invalid data")
    expect(clip_card(page, "Good").locator("details.state-details")).to_be_hidden()
    screenshot(page, "failed-details")

    cluster.add_media("games/broken-1.mp4")  # both uploads are replaced by real videos
    cluster.add_media("games/broken-2.mp4")
    retry_all = sidebar.get_by_role("button", name="Retry all failed")
    expect(retry_all).to_be_visible()
    retry_all.click()
    expect(sidebar.get_by_role("status")).to_have_text("Retried 2 clips.")
    for name in ("Broken 1", "Broken 2"):
        expect(clip_card(page, name)).to_have_accessible_description(state_pattern("Extracted"), timeout=20_000)
    expect(retry_all).to_be_hidden()  # no failed clip left
    screenshot(page, "retried-all")
    for clip_id in ("b1", "b2"):
        reasons = [e["data"].get("reason") for e in api.history(project, clip_id) if e["type"] == "extraction.requested"]
        assert reasons == ["registered", "manual_retry"], reasons
    assert [e["type"] for e in api.history(project, "good")][-1] == "extraction.completed"
