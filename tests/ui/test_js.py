"""The UI's pure modules under node's test runner (tests/js/clip-state.test.mjs): which state a clip shows, when it
turns slow, what its timeline says. Skipped without node."""

from __future__ import annotations

import json
import shutil
import subprocess
import typing

import pytest

from api.views import ClipStatus, ClipView
from tests.e2e.system import ROOT


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the browser tests still cover these rules end to end)")
    return node


def test_clip_state_and_timeline_rules() -> None:
    node = _node()
    result = subprocess.run(
        [node, "--test", "tests/js/clip-state.test.mjs"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_page_knows_exactly_the_statuses_the_api_sends() -> None:
    """One schema for both sides (the original UI waited for 'processing' while the server said 'running')."""
    script = "import('./api/static/clip-state.js').then(m => console.log(JSON.stringify(m.STATUSES)))"
    result = subprocess.run([_node(), "--input-type=module", "-e", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == set(typing.get_args(ClipStatus))
    assert typing.get_type_hints(ClipView)["status"] == ClipStatus
