"""`cliplog soak` as a user runs it: the real command, as a subprocess, on its own embedded PostgreSQL and Redis,
2 API instances and 3 workers under a minute of mixed faults. It must exit 0 (every check held) and print the
report's key lines. A new seed every run (printed in the output, and by the soak itself: `--seed` repeats it)."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys

import pytest

from runtime.processes import environment_without_cliplog
from tests.e2e.system import ROOT

pytestmark = [pytest.mark.fault, pytest.mark.timeout(600)]

CHECK_NAMES = [
    "every request answered as the contract says",
    "every clip completed, cancelled, or failed after its budget or a non-retryable error",
    "log: versions contiguous per stream",
    "log: one `requested` per attempt, at most one `started` and one outcome",
    "every completed clip's file exists, is whole and lasts as asked",
    "no temporary file or orphan output",
    "every feed client saw exactly its user's log, once, in order",
    "the clip projection equals a rebuild from the log",
]


def test_a_short_soak_under_mixed_faults_holds_every_check():
    seed = random.SystemRandom().randrange(1, 2**31)
    duration = os.environ.get("CLIPLOG_SOAK_DURATION", "60")
    # Its own data dir (a temporary folder it removes after a pass, keeps after a failure): pytest's tmp_path lies
    # under a folder only root may enter, and pgserver runs PostgreSQL as a user of its own.
    command = [sys.executable, "-m", "api.cli", "soak", "--duration", duration, "--seed", str(seed)]
    result = subprocess.run(command, cwd=ROOT, env=environment_without_cliplog(), capture_output=True, text=True,
                            timeout=560)  # fmt: skip
    output = result.stdout
    shown = f"seed {seed}\n--- stdout\n{output}\n--- stderr (end)\n{result.stderr[-6000:]}"
    assert result.returncode == 0, shown
    assert f"seed {seed}" in output and "soak passed: every check holds" in output, shown
    for title in ("Faults injected", "Clips by outcome", "Longest without progress", "Feed clients", "Checks"):
        assert title in output, shown
    for name in CHECK_NAMES:
        assert name in " ".join(output.split()), f"{name!r} missing\n{shown}"
    faults = re.search(r"(\d+) faults injected; (\d+) clips; settled ([\d.]+) s after the last fault", output)
    assert faults is not None, shown
    assert int(faults[1]) >= 10 and int(faults[2]) >= 200, shown
    assert "FAILED" not in output, shown
