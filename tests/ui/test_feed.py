"""Live updates survive a blocked WebSocket: the page polls, says "Polling", still shows every change within
CLIPLOG_POLL_AFTER, goes back to "Live" when the socket returns, and never applies an event twice."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import UiCluster, applied_counts, clip_card, screenshot, state_pattern

pytestmark = [pytest.mark.ui, pytest.mark.timeout(120)]

PROJECT = "feed"
POLL_AFTER = 2.0


def _register(api, clip_id: str, name: str) -> None:  # noqa: ANN001
    response = api.register(PROJECT, clip_id=clip_id, source="games/match.mp4", start=3.0, end=6.0, name=name)
    assert response.status_code == 201, response.text


def test_blocked_websocket_polls_then_goes_live_again_without_applying_an_event_twice(cluster: UiCluster, page) -> None:
    api = cluster.serve_ui(CLIPLOG_POLL_AFTER=str(POLL_AFTER))
    cluster.ui_worker()
    _register(api, "first", "First")
    api.wait_for(PROJECT, ["first"])

    sockets = {"blocked": True, "refused": 0, "opened": 0}

    def route_socket(ws) -> None:  # noqa: ANN001
        if sockets["blocked"]:
            sockets["refused"] += 1
            ws.close(code=1011, reason="blocked by the test")
        else:
            sockets["opened"] += 1
            ws.connect_to_server()

    page.route_web_socket("**/api/events/ws**", route_socket)
    polls = re.compile(r"/api/events\?")
    polls_in_flight: set = set()  # the page's polls not answered (or aborted) yet
    page.on("request", lambda request: polls.search(request.url) and polls_in_flight.add(request))
    page.on("requestfinished", lambda request: polls_in_flight.discard(request))
    page.on("requestfailed", lambda request: polls_in_flight.discard(request))
    page.goto(cluster.url(f"/projects/{PROJECT}"))
    indicator = page.get_by_role("status", name="Connection")
    expect(clip_card(page, "First")).to_have_accessible_description(state_pattern("Extracted"))
    expect(indicator).to_have_text("Polling", timeout=POLL_AFTER * 1000)
    assert sockets["refused"] >= 1

    # Changes still arrive, by polling, within POLL_AFTER of happening.
    _register(api, "second", "Second")
    api.wait_for(PROJECT, ["second"])
    expect(clip_card(page, "Second")).to_have_accessible_description(state_pattern("Extracted"), timeout=POLL_AFTER * 1000)
    expect(indicator).to_have_text("Polling")
    screenshot(page, "polling")

    # Neither the socket nor the server: offline; then the server again: polling, with what happened meanwhile.
    during = re.compile(r"/clips/during$")
    page.route(polls, lambda route: route.abort("connectionrefused"))
    page.route(during, lambda route: route.abort("connectionrefused"))
    _register(api, "during", "During the outage")  # ends the long poll in flight; the next one fails
    expect(indicator).to_have_text(re.compile(r"Offline · clips as of "))
    screenshot(page, "offline")
    api.wait_for(PROJECT, ["during"])
    page.unroute(polls)
    expect(indicator).to_have_text("Polling", timeout=POLL_AFTER * 1000 + 1000)
    # Its events arrive (each applied once), but reading the clip still fails: the page keeps trying until it works.
    positions = [e["position"] for e in api.history(PROJECT, "during")]
    page.wait_for_function("(ps) => ps.every((p) => window.cliplogDebug.applied[p] === 1)", arg=positions)
    with page.expect_event("requestfailed", lambda request: during.search(request.url) is not None, timeout=10_000):
        pass  # the next read of the clip, after all of its events were applied: refused as well
    expect(clip_card(page, "During the outage")).to_have_count(0)
    page.unroute(during)
    expect(clip_card(page, "During the outage")).to_have_accessible_description(state_pattern("Extracted"))

    # The socket is allowed again: live, and the next change arrives through it.
    sockets["blocked"] = False
    expect(indicator).to_have_text("Live", timeout=POLL_AFTER * 1000 + 3000)
    assert sockets["opened"] >= 1
    _register(api, "third", "Third")
    expect(clip_card(page, "Third")).to_have_accessible_description(state_pattern("Extracted"), timeout=10_000)
    # No poll answer still to come could apply anything again: every poll the page sent has ended (live, it sends
    # none), and a marker clip registered after Third has come through the socket since.
    _register(api, "marker", "Marker")
    expect(clip_card(page, "Marker")).to_have_accessible_description(state_pattern("Extracted"), timeout=10_000)
    assert not polls_in_flight, [request.url for request in polls_in_flight]

    counts = applied_counts(page)
    assert counts and set(counts.values()) == {1}, counts
    later = {
        str(e["position"]) for clip_id in ("second", "during", "third", "marker") for e in api.history(PROJECT, clip_id)
    }
    assert later <= set(counts), later - set(counts)
    modes = page.evaluate("() => window.cliplogDebug.modes")
    assert modes[-1] == "live" and "polling" in modes and "offline" in modes, modes


def test_a_silent_websocket_is_given_up_after_poll_after_and_the_page_polls(cluster: UiCluster, page) -> None:
    api = cluster.serve_ui(CLIPLOG_POLL_AFTER=str(POLL_AFTER))
    cluster.ui_worker()
    _register(api, "first", "First")
    api.wait_for(PROJECT, ["first"])
    # A socket that opens but never says anything (not even the server's pings): a dead connection.
    page.route_web_socket("**/api/events/ws**", lambda ws: None)
    page.goto(cluster.url(f"/projects/{PROJECT}"))
    expect(clip_card(page, "First")).to_have_accessible_description(state_pattern("Extracted"))
    started = time.monotonic()
    page.wait_for_function(
        "() => { const m = window.cliplogDebug.modes; const i = m.indexOf('live'); return i >= 0 && m.indexOf('polling', i) > i; }",
        timeout=(POLL_AFTER + 2) * 1000,
    )
    assert time.monotonic() - started <= POLL_AFTER + 1.5
    _register(api, "second", "Second")
    api.wait_for(PROJECT, ["second"])
    # Polls happen between reconnections to the silent socket: at most POLL_AFTER apart.
    expect(clip_card(page, "Second")).to_have_accessible_description(
        state_pattern("Extracted"), timeout=POLL_AFTER * 1000 + 1500
    )
    counts = applied_counts(page)
    assert counts and set(counts.values()) == {1}, counts
    # The server holds a long poll the page left behind for up to its `wait` even once the page is gone, and
    # `cliplog serve` waits for it on SIGTERM; an event ends it, so the cluster stops at once.
    page.context.close()
    _register(api, "last", "Last")
