"""Every state a clip can show, in a real browser against real processes: "Waiting for extraction", "Extracting…",
"Retrying: attempt n of m in Xs", "Extraction failed" with its retry turning into "Extracted" with a video that
plays, and the clip's timeline."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import UiCluster, applied_counts, assert_controls_named, clip_card, screenshot, state_pattern

pytestmark = [pytest.mark.ui, pytest.mark.timeout(120)]

PROJECT = "states"
CLIPS = {
    "good": {"source": "games/match.mp4", "start": 5.0, "end": 9.0, "name": "Brilliant pass"},
    "hung": {"source": "games/hang-once.mp4", "start": 10.0, "end": 14.0, "name": "Hangs once"},
    "broken": {"source": "games/broken.mp4", "start": 0.0, "end": 5.0, "name": "Corrupt upload"},
}


def test_each_state_appears_and_retry_turns_a_failed_clip_into_one_that_plays(cluster: UiCluster, page) -> None:
    cluster.add_media("games/hang-once.mp4")
    cluster.add_media("games/broken.mp4", b"not a video, just bytes\n" * 256)
    api = cluster.serve_ui()
    for clip_id, body in CLIPS.items():
        response = api.register(PROJECT, clip_id=clip_id, **body)
        assert response.status_code == 201, response.text

    # The token in the address signs the page in, then leaves the address bar.
    page.goto(cluster.url(f"/projects/{PROJECT}"))
    expect(page.get_by_role("heading", name=f"Project {PROJECT}")).to_be_visible()
    assert "token=" not in page.url and page.url.endswith(f"#/projects/{PROJECT}")
    assert page.evaluate("sessionStorage.getItem('cliplog.token')") == cluster.token

    # No worker yet: every clip waits, and says so.
    for body in CLIPS.values():
        expect(clip_card(page, body["name"])).to_have_accessible_description(state_pattern("Waiting for extraction"))
    expect(page.get_by_role("status", name="Connection")).to_have_text("Live")
    screenshot(page, "waiting")

    # A worker whose FFmpeg hangs on the first run of hang-once.mp4; attempts time out after 3 s, retried after 2-4 s.
    cluster.ui_worker(CLIPLOG_ATTEMPT_TIMEOUT="3", CLIPLOG_RETRY_BASE="4", CLIPLOG_RETRY_MAX="4")
    hung = clip_card(page, "Hangs once")
    expect(hung).to_have_accessible_description(re.compile(r"^Extracting… \d:\d\d"), timeout=10_000)
    expect(hung.locator(".spinner")).to_be_visible()
    screenshot(page, "extracting")

    good = clip_card(page, "Brilliant pass")
    expect(good).to_have_accessible_description(state_pattern("Extracted"))

    broken = clip_card(page, "Corrupt upload")
    expect(broken).to_have_accessible_description(state_pattern("Extraction failed"))
    expect(broken).to_contain_text("The source file is not a video that can be cut")  # the code, in words
    expect(broken).to_contain_text("broken.mp4 is not a video FFmpeg can read")  # and the service's own message
    retry = broken.get_by_role("button", name="Retry extraction")
    expect(retry).to_be_visible()
    expect(broken.locator(".spinner")).to_be_hidden()
    screenshot(page, "failed")

    expect(hung).to_have_accessible_description(
        re.compile(r"^Retrying: attempt 2 of 3 in \d+s"), timeout=10_000
    )
    expect(hung.get_by_role("button", name="Retry now")).to_be_visible()
    screenshot(page, "retrying")
    expect(hung).to_have_accessible_description(state_pattern("Extracted"), timeout=15_000)

    # The corrupt upload is replaced by a real video; "Retry extraction" turns the failed clip into an extracted one.
    cluster.add_media("games/broken.mp4")
    retry.click()
    expect(broken).to_have_accessible_description(state_pattern("Extracted"), timeout=15_000)
    expect(page.get_by_role("status", name="Clip updates")).to_have_text(re.compile("Corrupt upload: "))

    broken.get_by_role("link", name="Corrupt upload").click()
    panel = page.get_by_role("region", name="Corrupt upload")
    video = panel.get_by_label("Video of Corrupt upload")
    expect(video).to_be_visible()
    page.wait_for_function("v => v.readyState >= 2 && v.duration > 0", arg=video.element_handle(), timeout=15_000)
    duration = video.evaluate("v => v.duration")
    assert abs(duration - 5.0) < 1.5, duration
    video.evaluate("v => { v.muted = true; return v.play(); }")
    page.wait_for_function("v => v.currentTime > 0.3 && !v.paused", arg=video.element_handle(), timeout=10_000)
    timeline = panel.get_by_role("figure", name=re.compile("^Timeline: 2 attempts"))
    expect(timeline.get_by_role("listitem")).to_have_count(2)
    expect(timeline.get_by_role("listitem").nth(0)).to_contain_text("Run 1, attempt 1 of 3")
    expect(timeline.get_by_role("listitem").nth(0)).to_contain_text("failed")
    expect(timeline.get_by_role("listitem").nth(1)).to_contain_text("Run 2, attempt 1 of 3 (retried by a person): extracted")
    screenshot(page, "extracted")

    # The clip that hung: its timeline shows the timed-out attempt and the automatic retry that succeeded.
    hung.get_by_role("link", name="Hangs once").click()
    timeline = page.get_by_role("region", name="Hangs once").get_by_role("figure", name=re.compile("^Timeline"))
    attempts = timeline.get_by_role("listitem")
    expect(attempts).to_have_count(2)
    expect(attempts.nth(0)).to_contain_text(re.compile(r"Run 1, attempt 1 of 3 \(requested when the clip was added\): timed out after \d"))
    expect(attempts.nth(1)).to_contain_text("(automatic retry): extracted in")
    screenshot(page, "timeline")
    assert assert_controls_named(page) >= 8

    # Every event was applied once, and each one the clips went through was applied.
    counts = applied_counts(page)
    assert counts and set(counts.values()) == {1}, counts
    positions = {str(e["position"]) for clip_id in CLIPS for e in api.history(PROJECT, clip_id)}
    registered = {str(e["position"]) for clip_id in CLIPS for e in api.history(PROJECT, clip_id)[:1]}
    assert positions - registered <= set(counts), (positions - registered) - set(counts)


def test_a_refused_retry_says_why_and_shows_the_clip_as_it_is(cluster: UiCluster, page) -> None:
    """A page that missed the clip's changes (its feed is blocked) offers "Retry extraction" on a clip that is already
    extracted: the API refuses (409), the card says so, fetches the clip again and shows it extracted, and keyboard
    focus stays on the clip when the button goes away."""
    project = "refused"
    cluster.add_media("games/broken.mp4", b"not a video, just bytes\n" * 256)
    api = cluster.serve_ui()
    cluster.ui_worker()
    response = api.register(project, clip_id="broken", **CLIPS["broken"])
    assert response.status_code == 201, response.text
    assert api.wait_for(project, ["broken"])["broken"]["status"] == "failed"

    page.route_web_socket("**/api/events/ws**", lambda ws: ws.close(code=1011, reason="blocked by the test"))
    page.route(re.compile(r"/api/events\?.*wait="), lambda route: route.abort("connectionrefused"))
    page.goto(cluster.url(f"/projects/{project}"))
    broken = clip_card(page, "Corrupt upload")
    expect(broken).to_have_accessible_description(state_pattern("Extraction failed"))

    cluster.add_media("games/broken.mp4")
    assert api.retry(project, "broken").status_code == 202
    assert api.wait_for(project, ["broken"])["broken"]["status"] == "completed"
    expect(broken).to_have_accessible_description(state_pattern("Extraction failed"))  # the page has not heard

    broken.get_by_role("button", name="Retry extraction").click()
    expect(broken.get_by_role("alert")).to_have_text(re.compile(r"^Retry refused: \S"))
    expect(broken).to_have_accessible_description(state_pattern("Extracted"))
    expect(broken.get_by_role("button", name="Retry extraction")).to_be_hidden()
    expect(broken.get_by_role("link", name="Corrupt upload")).to_be_focused()
    screenshot(page, "retry-refused")
