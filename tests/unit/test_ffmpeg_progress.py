"""FFmpeg's `-progress` blocks as the worker reads them (handlers/ffmpeg.py) and what it makes of them
(handlers/progress.py): parsing, what counts as progress for the stall watch, percent, speed and ETA."""

from __future__ import annotations

import asyncio

import pytest

from handlers.ffmpeg import Report, Watch, parse_report
from handlers.progress import estimate

BLOCK = b"""frame=50
fps=0.00
stream_0_0_q=-1.0
bitrate=  72.3kbits/s
total_size=17353
out_time_us=1920078
out_time_ms=1920078
out_time=00:00:01.920078
dup_frames=0
drop_frames=0
speed=12.8x
progress=continue
"""


def test_a_block_parses_into_a_report_and_n_a_is_unknown():
    fields = dict(line.split("=", 1) for line in BLOCK.decode().splitlines())
    assert parse_report(fields) == Report(out_time=1.920078, frame=50, speed=12.8, total_size=17353, done=False)
    first = {"frame": "0", "out_time_us": "N/A", "speed": "N/A", "total_size": "N/A", "progress": "continue"}
    assert parse_report(first) == Report(out_time=None, frame=0, speed=None, total_size=None, done=False)
    assert parse_report({"out_time_us": "-23000", "speed": "nan", "progress": "end"}).out_time is None
    assert parse_report({"progress": "end"}).done


def test_only_a_block_that_moved_on_counts_as_progress():
    start = Report(out_time=None, frame=0, speed=None, total_size=48, done=False)
    assert start.advanced_from(None)  # some output
    assert not Report(out_time=None, frame=None, speed=None, total_size=None, done=False).advanced_from(None)
    later = Report(out_time=1.0, frame=25, speed=1.0, total_size=4000, done=False)
    assert later.advanced_from(start)
    assert not Report(out_time=1.0, frame=25, speed=0.9, total_size=4000, done=False).advanced_from(later)
    assert Report(out_time=1.0, frame=25, speed=0.9, total_size=4100, done=False).advanced_from(later)


async def test_the_watch_hands_over_each_block_and_keeps_its_clock_on_a_repeated_one():
    reports: list[Report] = []
    watch = Watch(reports.append, stall_after=30)
    stream = asyncio.StreamReader()
    stream.feed_data(BLOCK)
    stream.feed_data(b"frame=50\ntotal_size=17353\nout_time_us=1920078\nspeed=6.4x\nprogress=continue\n")
    stream.feed_eof()
    began = watch.advanced_at
    reading = asyncio.create_task(watch.read(stream))
    await reading
    assert [r.speed for r in reports] == [12.8, 6.4]
    assert watch.last == reports[-1]
    assert watch.advanced_at >= began and watch.stalled_at == watch.advanced_at + 30


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (Report(out_time=2.5, frame=62, speed=2.0, total_size=1, done=False), (25.0, 2.0, 3.8)),
        (Report(out_time=12.0, frame=300, speed=4.0, total_size=1, done=False), (100.0, 4.0, 0.0)),  # copy: a GOP more
        (Report(out_time=None, frame=0, speed=0.0, total_size=1, done=False), (0.0, 0.0, None)),
        (Report(out_time=5.0, frame=125, speed=None, total_size=1, done=False), (50.0, 2.5, 2.0)),  # 5 s out in 2 s
        (Report(out_time=9.9, frame=250, speed=3.0, total_size=1, done=True), (100.0, 3.0, 0.0)),
    ],
)
def test_percent_speed_and_eta_of_a_10_second_clip(report: Report, expected: tuple) -> None:
    assert estimate(report, length=10.0, elapsed=2.0) == expected


class _Pool:
    """Records the progress writes `eventlog.progress.record` would make (the pool is all it uses)."""

    def __init__(self) -> None:
        self.percents: list[float] = []

    async def fetchrow(self, _sql: str, *args: object) -> object:
        self.percents.append(args[4])  # type: ignore[arg-type]
        return object()


def _reporter(interval: float):  # noqa: ANN202
    from domain.clip import ClipState
    from handlers.progress import ProgressReporter

    pool = _Pool()
    services = type("S", (), {"pool": pool})()
    state = ClipState(project_id="p", clip_id="c", run=1, attempt=1, start=0.0, end=10.0)
    return ProgressReporter(services, state, interval=interval), pool  # type: ignore[arg-type]


def _report(out_time: float, done: bool = False) -> Report:
    return Report(out_time=out_time, frame=int(out_time * 25), speed=2.0, total_size=1, done=done)


async def test_a_cut_done_within_the_first_interval_writes_no_progress():
    reporter, pool = _reporter(interval=0.2)
    reporter.on_report(_report(1.0))
    reporter.on_report(_report(10.0, done=True))
    await reporter.close()
    assert pool.percents == []


async def test_a_longer_cut_writes_the_latest_at_most_once_an_interval_then_its_100_at_once():
    reporter, pool = _reporter(interval=0.2)
    for t in (1.0, 2.0, 3.0):  # all before the first write is due: only the latest counts
        reporter.on_report(_report(t))
    async with asyncio.timeout(5):
        while not pool.percents:  # the first write, due after the interval
            await asyncio.sleep(0.01)
    reporter.on_report(_report(4.0))  # due an interval after the first write
    reporter.on_report(_report(9.9, done=True))  # the last report: written without waiting for the interval
    await reporter.close()
    assert pool.percents == [30.0, 100.0]
