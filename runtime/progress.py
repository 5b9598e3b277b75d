"""Progress of a long run (rebuild, export, import) on stderr: a `rich` bar with the rate and the time left on a
terminal, else a plain line every few seconds (for logs and pipes)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TaskProgressColumn, TextColumn
from rich.progress import TimeRemainingColumn


class Progress:
    """`with Progress("export", unit="events") as p: p.total(n); p.advance(k)`."""

    def __init__(self, label: str, *, unit: str = "events", stream: TextIO | None = None, every: float = 5.0) -> None:
        self.label, self.unit, self.every = label, unit, every
        self.stream = stream if stream is not None else sys.stderr
        self.done, self._total = 0, None
        self._bar: RichProgress | None = None
        self._started = self._last_line = 0.0

    def __enter__(self) -> "Progress":
        self._started = self._last_line = time.monotonic()
        if self.stream.isatty():
            self._bar = RichProgress(
                TextColumn(f"{self.label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=None, rate="")
        return self

    def total(self, total: int) -> None:
        self._total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def rate(self) -> float:
        elapsed = time.monotonic() - self._started
        return self.done / elapsed if elapsed > 0 else 0.0

    def advance(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{self.rate():,.0f} {self.unit}/s")
            return
        now = time.monotonic()
        if now - self._last_line >= self.every:
            self._last_line = now
            self._line()

    def _line(self, final: bool = False) -> None:
        rate = self.rate()
        of = f"/{self._total:,}" if self._total is not None else ""
        line = f"{self.label}: {self.done:,}{of} {self.unit}, {rate:,.0f} {self.unit}/s"
        if not final and self._total and rate > 0:
            line += f", about {max(0.0, (self._total - self.done) / rate):,.0f} s left"
        if final:
            line += f", done in {time.monotonic() - self._started:,.1f} s"
        print(line, file=self.stream, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif exc[0] is None:
            self._line(final=True)
