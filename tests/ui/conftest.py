"""Browser tests: Debian's Chromium driven by Playwright for Python against real `cliplog serve` and `cliplog worker`
processes on real PostgreSQL and Redis (the fault tests' `Cluster`: a private redis-server, FFmpeg wrappers through
CLIPLOG_FFMPEG, short timeouts through the environment), on a database of the session's server dropped at its end.

No browser is ever downloaded: `/usr/bin/chromium` (scripts/install-system-deps installs it) or the tests are
skipped. Screenshots of every state go to test-artifacts/ui/ (and `failure-<test>.png` when a test fails).

Playwright's sync API keeps its own event loop running while it is open, so nothing may use asyncio meanwhile: the
`page` fixture starts Playwright after the cluster (whose set-up uses asyncio) and stops it after each test.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from runtime.processes import Process
from tests.e2e.system import ROOT, Api
from tests.faults.conftest import Cluster, source_video  # noqa: F401 - the session's test video (a fixture)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts" / "ui"

# The page's feed: POLL_AFTER seconds of silence before polling, so the server must ping more often than that.
UI_ENV = {
    "CLIPLOG_POLL_AFTER": "2",
    "CLIPLOG_WS_PING_INTERVAL": "0.5",
    "CLIPLOG_SLOW_AFTER": "60",
}

# One FFmpeg wrapper for every browser test, driven by the source's file name:
#   .../media/**/hang-once*  hangs on its first run (per file), then runs the real FFmpeg
#   .../media/**/hang-always* hangs every time
#   .../media/**/real-time*   reads its input at the video's own pace (`-re`): a 6 s clip takes about 6 s
# Anything else runs the real FFmpeg. A hung run is killed with its process group when the attempt times out.
WRAPPER = """
for arg in "$@"; do
  case "$arg" in
    */media/*hang-once*)
      mark="$STATE/$(basename "$arg").hung"
      if [ ! -e "$mark" ]; then : > "$mark"; exec sleep 600; fi ;;
    */media/*hang-always*)
      exec sleep 600 ;;
    */media/*real-time*)
      exec "$REAL" -re "$@" ;;
  esac
done
exec "$REAL" "$@"
"""


class UiCluster(Cluster):
    """A Cluster with the browser tests' FFmpeg wrapper and a helper to open the page."""

    def __init__(self, root: Path, source: Path, *, database_url: str) -> None:
        super().__init__(root, source, database_url=database_url)
        self.ffmpeg_wrapper = self.wrapper("ui-ffmpeg", WRAPPER)
        self.media = self.root / "media"

    def add_media(self, relative: str, content: bytes | Path | None = None) -> Path:
        """A file in the media root: a copy of the test video by default, or these bytes, or a copy of that file."""
        target = self.media / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            shutil.copyfile(content or self.media / "games" / "match.mp4", target)
        return target

    def serve_ui(self, **env: str) -> Api:
        return self.serve(**{**UI_ENV, **env})

    def ui_worker(self, **env: str) -> Process:
        return self.worker(**{**UI_ENV, "CLIPLOG_FFMPEG": self.ffmpeg_wrapper, **env})

    def url(self, fragment: str = "/", api: Api | None = None, token: str | None = None) -> str:
        base = (api or self.api).base_url
        return f"{base}/?token={token or self.token}#{fragment}"


@pytest_asyncio.fixture(loop_scope="session")
async def ui_database_url(make_database: Callable[..., Awaitable[str]]) -> str:
    return await make_database(migrated=True)


@pytest.fixture
def cluster(tmp_path: Path, ui_database_url: str, source_video: Path) -> Iterator[UiCluster]:  # noqa: F811
    system = UiCluster(tmp_path, source_video, database_url=ui_database_url)
    try:
        yield system
    finally:
        system.close()


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/install-system-deps installs Debian's package)")
    if "cluster" in request.fixturenames:
        request.getfixturevalue("cluster")  # set up first: it uses asyncio, which Playwright's loop forbids
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class PageLog:
    """What the page said on its console and the errors it threw: printed when a test fails."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def attach(self, page) -> None:  # noqa: ANN001
        page.on("console", lambda message: self.lines.append(f"console.{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.lines.append(f"pageerror: {error}"))

    @property
    def errors(self) -> list[str]:
        return [line for line in self.lines if line.startswith("pageerror")]


@pytest.fixture
def page_log() -> PageLog:
    return PageLog()


@pytest.fixture
def new_page(browser, page_log: PageLog, request: pytest.FixtureRequest):  # noqa: ANN001, ANN201
    """`new_page(**context_options)` -> a page in a fresh browser context (own sessionStorage and clock)."""
    contexts = []
    pages = []

    def make(**options: object):  # noqa: ANN202
        context = browser.new_context(viewport={"width": 1280, "height": 900}, **options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page_log.attach(page)
        pages.append(page)
        return page

    yield make
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for index, page in enumerate(pages):
            try:
                page.screenshot(path=ARTIFACTS / f"failure-{request.node.name}-{index}.png", full_page=True)
            except Exception:  # noqa: BLE001 - the page may be gone
                pass
        print("\n".join(page_log.lines[-200:]))
        if "cluster" in request.fixturenames:
            print(request.getfixturevalue("cluster").logs())
    for context in contexts:
        context.close()
    assert not page_log.errors, page_log.errors


@pytest.fixture
def page(new_page):  # noqa: ANN001, ANN201
    return new_page()


def screenshot(page, name: str) -> Path:  # noqa: ANN001
    """Keep a picture of the page as test-artifacts/ui/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    return path


def clip_card(page, name: str):  # noqa: ANN001, ANN201
    """A clip in the sidebar: the article named after the clip, inside the "Clips" navigation."""
    return page.get_by_role("navigation", name="Clips").get_by_role("article", name=name, exact=True)


def assert_controls_named(page) -> int:  # noqa: ANN001
    """Every visible control (button, link, field, player) has a role and a non-empty accessible name."""
    from playwright.sync_api import expect

    controls = page.locator("button:visible, a:visible, input:visible, select:visible, video:visible").all()
    for control in controls:
        expect(control).to_have_accessible_name(re.compile(r"\S"))
    return len(controls)


def applied_counts(page) -> dict[str, int]:  # noqa: ANN001
    return page.evaluate("() => ({...window.cliplogDebug.applied})")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def state_pattern(text: str) -> re.Pattern[str]:
    """The accessible description of a clip card starts with its state's words."""
    return re.compile("^" + re.escape(text))


__all__ = ["ARTIFACTS", "UiCluster", "applied_counts", "assert_controls_named", "clip_card", "screenshot", "state_pattern"]
