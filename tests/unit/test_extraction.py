"""Pure parts of the extraction job (handlers/extraction.py): how long an outcome's append is retried, and which
FFmpeg failures are the store's."""

from __future__ import annotations

import pytest

from handlers.extraction import record_patience
from runtime.settings import load


@pytest.mark.parametrize("cut_took", [0.0, 1.0, 300.0, 599.0, 600.0, 700.0])
def test_an_outcome_lands_within_the_attempt_timeout_plus_a_lease_of_its_start_so_the_orphan_grace_covers_it(
    cut_took: float,
) -> None:
    """The sweep keeps outputs younger than CLIPLOG_ORPHAN_GRACE, which settings check is longer than
    CLIPLOG_ATTEMPT_TIMEOUT + CLIPLOG_LEASE_TIMEOUT: the worker must have given up recording by then, however early
    the cut ended (it used to retry for the whole time left at the start plus a lease *after* the cut: up to
    2 x timeout + lease after the start)."""
    settings = load({})
    start = 1000.0
    deadline = start + settings.attempt_timeout
    now = start + cut_took
    gives_up_at = now + record_patience(deadline, now, settings.lease_timeout)
    assert gives_up_at <= start + settings.attempt_timeout + settings.lease_timeout + (max(0.0, now - deadline))
    assert gives_up_at - start < settings.orphan_grace
    assert record_patience(deadline, now, settings.lease_timeout) >= settings.lease_timeout
