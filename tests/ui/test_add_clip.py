"""Signing in, the projects page, and the add-clip form: errors from the form and from the API next to their field."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import UiCluster, assert_controls_named, clip_card, screenshot, state_pattern

pytestmark = [pytest.mark.ui, pytest.mark.timeout(120)]


def test_sign_in_then_add_clips_with_errors_next_to_their_fields(cluster: UiCluster, page) -> None:
    cluster.add_media("games/second-half.mp4")
    cluster.add_media("games/.partial-upload.mp4")  # hidden: not offered
    cluster.add_media("games/notes.txt", b"not a video")  # not a video file name: not offered
    api = cluster.serve_ui()
    cluster.ui_worker()

    # A bad token in the address: the sign-in form says so; the right token signs in.
    page.goto(cluster.url("/", token="not-a-token"))
    expect(page.get_by_role("heading", name="Sign in to cliplog")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("not accepted")
    assert "token=" not in page.url
    page.get_by_label("API token").fill(cluster.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Your projects")).to_be_visible()
    expect(page.get_by_text("No projects yet")).to_be_visible()

    # A new project, by keyboard.
    name = page.get_by_label("Project name")
    name.fill("bad name!")
    name.press("Enter")
    expect(name).to_have_accessible_description(re.compile("Use 1 to 64 letters"))
    name.fill("highlights")
    name.press("Enter")
    expect(page.get_by_role("heading", name="Project highlights")).to_be_visible()
    expect(page.get_by_role("heading", name="No clips yet")).to_be_visible()

    page.get_by_role("navigation", name="Clips").get_by_role("button", name="Add a clip").click()
    dialog = page.get_by_role("dialog", name="Add a clip")
    expect(dialog).to_be_visible()
    source = dialog.get_by_label("Source video")
    expect(source).to_be_focused()
    # the media folder's listing arrives after the dialog opens ("Loading the media folder…" until then)
    expect(source.locator("option")).to_have_text(["Choose a video…", "games/match.mp4", "games/second-half.mp4"])

    # The form's own checks: a bad range, next to the End field.
    start, end = dialog.get_by_label("Start", exact=True), dialog.get_by_label("End", exact=True)
    source.select_option("games/match.mp4")
    start.fill("20")
    end.fill("0:10")
    dialog.get_by_role("button", name="Add clip").click()
    expect(end).to_have_accessible_description(re.compile(r"The end must be after the start \(0:20\)"))
    expect(end).to_have_attribute("aria-invalid", "true")
    expect(end).to_be_focused()
    expect(start).not_to_have_attribute("aria-invalid", "true")
    screenshot(page, "form-error")
    assert assert_controls_named(dialog) >= 8
    start.fill("soon")
    dialog.get_by_role("button", name="Add clip").click()
    expect(start).to_have_accessible_description(re.compile("Enter the start as seconds"))

    # The API's check: the chosen video disappeared meanwhile (400 with extra.field = source), next to Source.
    source.select_option("games/second-half.mp4")
    start.fill("1:02")
    end.fill("65.5")
    (cluster.media / "games" / "second-half.mp4").unlink()
    dialog.get_by_role("button", name="Add clip").click()
    expect(source).to_have_accessible_description(re.compile("is not a video file in the media folder"))
    expect(source).to_have_attribute("aria-invalid", "true")
    expect(start).not_to_have_attribute("aria-invalid", "true")
    screenshot(page, "form-api-error")

    # A good clip: the dialog closes, the clip is selected and followed to "Extracted".
    source.select_option("games/match.mp4")
    start.fill("2")
    end.fill("5.5")
    dialog.get_by_label("Name (optional)").fill("Opening goal")
    dialog.get_by_label("Frame-accurate").check()
    dialog.get_by_role("button", name="Add clip").click()
    expect(dialog).to_be_hidden()
    card = clip_card(page, "Opening goal")
    expect(card).to_have_accessible_description(state_pattern("Extracted"), timeout=20_000)
    panel = page.get_by_role("region", name="Opening goal")
    expect(panel).to_contain_text("Frame-accurate (re-encoded)")
    expect(panel).to_contain_text("0:02 to 0:05.5 (3.5 s)")
    expect(page.get_by_role("status", name="Connection")).to_have_text("Live")
    clip = api.clips("highlights")[0]
    assert (clip["start"], clip["end"], clip["mode"], clip["name"]) == (2.0, 5.5, "accurate", "Opening goal")

    # Escape closes the dialog; the projects page lists the project with its clips by state.
    page.get_by_role("navigation", name="Clips").get_by_role("button", name="Add a clip").click()
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    page.get_by_role("link", name="Projects").click()
    project = page.get_by_role("link", name="highlights")
    expect(project).to_have_accessible_description("1 clip: 1 extracted")
    screenshot(page, "projects")
