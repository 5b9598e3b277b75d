"""No spinner turns without bound: a clip pending or running for CLIPLOG_SLOW_AFTER says "Taking longer than
expected" and offers "Retry extraction", which works. Once with a small SLOW_AFTER and the real clock, once at the
default five minutes with Playwright's clock driving the page."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import UiCluster, clip_card, screenshot, state_pattern

pytestmark = [pytest.mark.ui, pytest.mark.timeout(120)]

PROJECT = "slow"
NAME = "Stuck on the first try"


def test_taking_longer_than_expected_at_five_minutes_by_the_page_clock_then_retry_works(
    cluster: UiCluster, new_page
) -> None:
    cluster.add_media("games/hang-once.mp4")
    # Two API instances on the same log: one with the default SLOW_AFTER (300 s), one with 3 s.
    default_api = cluster.serve_ui(CLIPLOG_SLOW_AFTER="300")
    quick_api = cluster.serve_ui(CLIPLOG_SLOW_AFTER="3")
    # The first FFmpeg run on hang-once.mp4 hangs; the attempt's own deadline, and its stall detection, are far away.
    cluster.ui_worker(CLIPLOG_ATTEMPT_TIMEOUT="120", CLIPLOG_STALL_AFTER="120")
    response = quick_api.register(PROJECT, clip_id="stuck", source="games/hang-once.mp4", start=2.0, end=6.0, name=NAME)
    assert response.status_code == 201, response.text
    quick_api.wait_for(PROJECT, ["stuck"], until=lambda clip: clip["status"] == "running", timeout=20)

    # Five minutes, by the page's clock: the spinner stops and the page says so.
    page = new_page()
    page.clock.install()
    page.goto(cluster.url(f"/projects/{PROJECT}", api=default_api))
    card = clip_card(page, NAME)
    expect(card).to_have_accessible_description(re.compile(r"^Extracting… 0:0\d"))
    expect(card.get_by_role("button", name="Retry extraction")).to_be_hidden()
    page.clock.fast_forward("04:40")
    expect(card).to_have_accessible_description(re.compile(r"^Extracting… 4:[45]\d"))
    expect(card.get_by_role("button", name="Retry extraction")).to_be_hidden()
    page.clock.fast_forward("00:25")
    expect(card).to_have_accessible_description(
        re.compile(r"^Taking longer than expected Extracting for 5:\d\d so far")
    )
    expect(card.get_by_role("button", name="Retry extraction")).to_be_visible()
    expect(card.locator(".spinner")).to_be_hidden()
    screenshot(page, "slow-five-minutes")
    page.context.close()

    # SLOW_AFTER=3 on the real clock; the retry is accepted (the server agrees it is slow) and succeeds.
    page = new_page()
    page.goto(cluster.url(f"/projects/{PROJECT}", api=quick_api))
    card = clip_card(page, NAME)
    expect(card).to_have_accessible_description(state_pattern("Taking longer than expected"), timeout=10_000)
    retry = card.get_by_role("button", name="Retry extraction")
    screenshot(page, "slow")
    retry.focus()
    page.keyboard.press("Enter")  # by keyboard
    expect(card).to_have_accessible_description(state_pattern("Extracted"), timeout=15_000)
    card.get_by_role("link", name=NAME).click()
    attempts = page.get_by_role("region", name=NAME).get_by_role("figure").get_by_role("listitem")
    expect(attempts).to_have_count(2)
    expect(attempts.nth(0)).to_contain_text("timed out after")
    expect(attempts.nth(0)).to_contain_text("it was taking longer than expected and a person retried it")
    expect(attempts.nth(1)).to_contain_text("Run 2, attempt 1 of 3 (retried by a person): extracted")
    history = [e["type"] for e in quick_api.history(PROJECT, "stuck")]
    assert history == [
        "extraction.requested",
        "extraction.started",
        "extraction.timed_out",
        "extraction.requested",
        "extraction.started",
        "extraction.completed",
    ], history
    default_api.close()
