"""Progress of long runs: a plain line with the rate and the time left off a terminal, a rich bar on one."""

from __future__ import annotations

import io

from runtime.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_plain_line_with_rate_and_time_left_then_a_last_one() -> None:
    out = io.StringIO()
    with Progress("export", stream=out, every=0.0) as progress:
        progress.total(1000)
        progress.advance(250)
    first, last = out.getvalue().splitlines()
    assert first.startswith("export: 250/1,000 events, ") and "events/s" in first and "s left" in first
    assert last.startswith("export: 250/1,000 events, ") and "done in" in last


def test_lines_come_at_most_every_few_seconds() -> None:
    out = io.StringIO()
    with Progress("import", stream=out, every=3600.0) as progress:
        progress.total(10)
        for _ in range(10):
            progress.advance(1)
    assert out.getvalue().splitlines() == [line for line in out.getvalue().splitlines() if "done in" in line]


def test_on_a_terminal_a_bar_with_the_count() -> None:
    out = Terminal()
    with Progress("rebuild", stream=out) as progress:
        progress.total(100)
        progress.advance(40)
    assert "rebuild" in out.getvalue() and "40/100" in out.getvalue() and "done in" not in out.getvalue()
