"""A running attempt's live progress: FFmpeg's `-progress` reports (handlers/ffmpeg.py) turned into the percent of
the clip done, the speed and an ETA, and written beside the lease (eventlog/progress.py) at most once a second.

The writer is a task of its own, so a slow database never holds up the reading of FFmpeg's output, and only the
latest value is written. The first write is due `INTERVAL` after the cut started: a cut that ends sooner (a stream
copy takes about 0.1 s) writes nothing, since its outcome follows at once. After that, FFmpeg's last report
(`progress=end`, 100 %) is written at once, and `close` waits for it (at most `FLUSH_TIMEOUT`), so the 100 % reaches
the feed before the attempt's outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time

from domain.clip import ClipState
from eventlog.progress import ProgressMessage, record
from handlers.ffmpeg import Report
from runtime.aio import wait_event
from usecases.services import Services

log = logging.getLogger("cliplog.progress")

INTERVAL = 1.0  # seconds between two writes of one attempt's progress
FLUSH_TIMEOUT = 1.0


def estimate(report: Report, length: float, elapsed: float) -> tuple[float, float | None, float | None]:
    """`(percent, speed, eta_seconds)` of a clip `length` seconds long, `elapsed` wall seconds into the cut. Speed
    is FFmpeg's (× real time), else the output time over the wall time; the ETA is the output still to write at
    that speed."""
    if report.done:
        return 100.0, report.speed, 0.0
    done = min(length, report.out_time or 0.0)
    percent = 100.0 * done / length if length > 0 else 0.0
    speed = report.speed
    if not speed and done > 0 and elapsed > 0:
        speed = done / elapsed
    eta = (length - done) / speed if speed else None
    return round(percent, 1), speed, round(eta, 1) if eta is not None else None


class ProgressReporter:
    """Receives `Report`s for `state`'s current attempt (`on_report`, from the FFmpeg reader) and writes them."""

    def __init__(self, services: Services, state: ClipState, interval: float = INTERVAL) -> None:
        self.services = services
        self.state = state
        self.interval = interval
        self.length = state.end - state.start
        self.began = time.monotonic()
        self.percent = 0.0  # never goes back
        self._latest: tuple[ProgressMessage, float | None] | None = None
        self._wake = asyncio.Event()
        self._final = asyncio.Event()
        self._task = asyncio.create_task(self._write_loop(), name="progress")

    def on_report(self, report: Report) -> None:
        percent, speed, eta = estimate(report, self.length, time.monotonic() - self.began)
        self.percent = max(self.percent, percent)
        state = self.state
        message = ProgressMessage(
            project_id=state.project_id,
            clip_id=state.clip_id,
            run=state.run,
            attempt=state.attempt,
            percent=self.percent,
            eta_seconds=eta,
        )
        self._latest = (message, round(speed, 2) if speed is not None else None)
        self._wake.set()
        if report.done:
            self._final.set()

    async def _write_loop(self) -> None:
        if await wait_event(self._final, self.interval):
            return  # done within the first interval: nothing to show
        while True:
            await self._wake.wait()
            self._wake.clear()
            assert self._latest is not None
            message, speed = self._latest
            try:
                if not await record(self.services.pool, message, speed):
                    return  # the attempt is over
            except Exception as error:  # noqa: BLE001 - progress is best effort; the lease is what counts
                log.warning("progress of %s/%s not written: %s", message.project_id, message.clip_id, error)
            if message.percent >= 100.0:
                return
            await wait_event(self._final, self.interval)

    async def close(self) -> None:
        """Write FFmpeg's last report if it is still pending (bounded), then stop."""
        if self._final.is_set() and not self._task.done():
            await asyncio.wait([self._task], timeout=FLUSH_TIMEOUT)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
