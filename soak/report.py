"""The soak's report: `rich` tables when rich is installed, the same rows as plain text otherwise. The last line
is `soak passed: every check holds` or `soak FAILED: ...`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import msgspec

from runtime.settings import Settings
from soak import checks
from soak.checks import Bound
from soak.faults import Fault
from soak.feeds import FeedRecorder


class Outcome(msgspec.Struct, kw_only=True):
    """Everything the report shows."""

    seed: int
    duration: float
    root: Path
    settings: Settings
    faults: list[Fault]
    clips: dict[str, Counter[str]]  # behaviour -> final status (or "failed:<code>")
    expected: Counter[str]  # behaviour -> clips that ended as it expects
    settle_seconds: float | None  # None: it did not settle
    gaps: dict[str, checks.Gap]
    bounds: dict[str, Bound]
    slack: float
    feeds: list[FeedRecorder]
    checks: list[tuple[str, list[str]]]
    notes: list[str]

    @property
    def passed(self) -> bool:
        return all(not problems for _, problems in self.checks)



Table = tuple[str, Sequence[str], list[Sequence[str]]]  # title, header, rows


def tables(outcome: Outcome) -> list[Table]:
    by_kind: dict[str, list[Fault]] = {}
    for fault in outcome.faults:
        by_kind.setdefault(fault.kind, []).append(fault)
    faults = []
    for kind, injected in sorted(by_kind.items()):
        longest = max(injected, key=lambda f: f.ended - f.began)
        faults.append((kind, str(len(injected)), f"{longest.ended - longest.began:.1f}", longest.detail))
    faults.append(("all", str(len(outcome.faults)), "", ""))

    statuses = sorted({label for counts in outcome.clips.values() for label in counts})
    clips = [
        (name, str(sum(counts.values())), *[str(counts.get(s, 0) or "") for s in statuses], str(outcome.expected[name]))
        for name, counts in outcome.clips.items()
        if counts
    ]
    total: Counter[str] = sum(outcome.clips.values(), Counter())
    clips.append(("all", str(sum(total.values())), *[str(total[s]) for s in statuses], str(sum(outcome.expected.values()))))

    waiting = []
    for status in ("pending", "running", "retrying"):
        gap, bound = outcome.gaps.get(status), outcome.bounds[status]
        longest = f"{gap.seconds:.1f} s" if gap else "-"
        clip = f"{gap.key[0]}/{gap.key[1]}" if gap else ""
        enforced = f"{bound.seconds:g} s" + ("" if bound.enforced else " (not enforced)")
        waiting.append((status, longest, clip, enforced, bound.promise))

    feeds = [
        (f.name, str(f.connections), str(f.cuts), str(len(f.received)),
         ", ".join(f"{k} x{n}" for k, n in sorted(f.drops.items())) or "-")
        for f in outcome.feeds
    ]  # fmt: skip
    results = [("ok" if not problems else "FAILED", name, "; ".join(problems)) for name, problems in outcome.checks]
    return [
        ("Faults injected", ("kind", "count", "longest s", "the longest"), faults),
        ("Clips by outcome", ("behaviour", "clips", *statuses, "as expected"), clips),
        ("Longest without progress (stuck time), by waiting state",
         ("state", "longest", "clip", "bound", "what promises it"), waiting),
        ("Feed clients", ("client", "connections", "cuts", "events", "other drops"), feeds),
        ("Checks", ("", "check", "problems"), results),
    ]  # fmt: skip


def summary(outcome: Outcome) -> list[str]:
    settle = (
        f"settled {outcome.settle_seconds:.1f} s after the last fault ended"
        if outcome.settle_seconds is not None
        else "did NOT settle: clips were still waiting when the soak gave up"
    )
    failed = [name for name, problems in outcome.checks if problems]
    lines = [
        f"seed {outcome.seed}; {outcome.duration:g} s of faults; {len(outcome.faults)} faults injected; "
        f"{sum(sum(c.values()) for c in outcome.clips.values())} clips; {settle}",
        f"longest stuck time: {max((g.seconds for g in outcome.gaps.values()), default=0):.1f} s "
        f"(slack over the bounds for the faults' own outages: {outcome.slack:.1f} s)",
        *outcome.notes,
        "soak passed: every check holds" if not failed else f"soak FAILED: {len(failed)} check(s) failed: {'; '.join(failed)}",
    ]
    return lines


def print_report(outcome: Outcome) -> None:
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table as RichTable
    except ImportError:
        print_plain(outcome)
        return
    terminal = Console()
    console = terminal if terminal.is_terminal else Console(width=160)
    for title, header, rows in tables(outcome):
        table = RichTable(title=title, box=box.SIMPLE, title_justify="left")
        for column in header:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for line in summary(outcome):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def print_plain(outcome: Outcome) -> None:
    for title, header, rows in tables(outcome):
        print(f"\n{title}")
        widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
        for row in (header, *rows):
            print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    print()
    for line in summary(outcome):
        print(line)
