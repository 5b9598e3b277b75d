"""The FFmpeg adapter: probe a file, cut a clip, all as subprocesses that die with their deadline.

Every FFmpeg run is started in its own process group and the whole group is killed on timeout or cancellation,
so a wrapper script or a child blocked on its input cannot outlive the attempt.

A cut runs with `-progress pipe:1`: FFmpeg writes a block of `key=value` lines to its stdout about every 0.5 s
(`out_time_us`, `frame`, `speed`, ..., ending with `progress=continue` or `progress=end`). Each block is handed to
the caller as a `Report`, and a run whose reports stop advancing (no new `out_time`, `frame` or `total_size`) for
`stall_after` seconds is killed like one past its deadline, raising `Stalled`.
"""

from __future__ import annotations

import asyncio
import bisect
import ctypes
import json
import os
import re
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import ffmpeg as ffmpeg_python
import msgspec

log = logging.getLogger("cliplog.ffmpeg")

class MediaInfo(msgspec.Struct, frozen=True):
    duration: float
    has_video: bool
    keyframes: tuple[float, ...] | None = None  # video keyframe times in seconds, ascending; None: not known

    def keyframe_at_or_before(self, seconds: float) -> float:
        """Where a stream copy from `seconds` starts: the last keyframe at or before it (0 when not known)."""
        at = bisect.bisect_right(self.keyframes or (), seconds + 0.001)
        return self.keyframes[at - 1] if self.keyframes and at else 0.0


class ExtractionError(Exception):
    """A failure with an error code from domain.policy.RETRYABLE and a message a person understands."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Deadline(Exception):
    """The process ran past its time and was killed."""


class Stalled(Exception):
    """FFmpeg reported no progress for `stall_after` seconds and was killed."""


class Report(msgspec.Struct, frozen=True):
    """One block of FFmpeg's `-progress` output: seconds of output written, frames, speed (× real time), and
    whether it is the last (`progress=end`). None where FFmpeg says N/A."""

    out_time: float | None
    frame: int | None
    speed: float | None
    total_size: int | None
    done: bool

    def advanced_from(self, previous: Report | None) -> bool:
        """Whether this block shows work done since `previous` (the first block with any output counts)."""
        mark = (self.out_time or 0.0, self.frame or 0, self.total_size or 0)
        before = (0.0, 0, 0) if previous is None else (previous.out_time or 0.0, previous.frame or 0, previous.total_size or 0)
        return any(now > then for now, then in zip(mark, before))


def _number(text: str | None, kind: type) -> float | int | None:
    if text is None:
        return None
    try:
        value = kind(text.strip().rstrip("x"))
    except ValueError:
        return None
    return value if value == value and value >= 0 else None  # N/A, nan, negative: unknown


def parse_report(fields: dict[str, str]) -> Report:
    """A `Report` from one block's `key=value` pairs."""
    out_us = _number(fields.get("out_time_us"), int)
    return Report(
        out_time=out_us / 1e6 if out_us is not None else None,
        frame=_number(fields.get("frame"), int),  # type: ignore[arg-type]
        speed=_number(fields.get("speed"), float),
        total_size=_number(fields.get("total_size"), int),  # type: ignore[arg-type]
        done=fields.get("progress") == "end",
    )


OnReport = Callable[[Report], None]


class Watch:
    """Reads `-progress` blocks from a stream, hands each to `on_report`, and remembers when work last advanced."""

    def __init__(self, on_report: OnReport, stall_after: float) -> None:
        self.on_report = on_report
        self.stall_after = stall_after
        self.last: Report | None = None
        self.advanced_at = time.monotonic()  # the process start counts as progress

    @property
    def stalled_at(self) -> float:
        return self.advanced_at + self.stall_after

    async def read(self, stream: asyncio.StreamReader) -> None:
        fields: dict[str, str] = {}
        while line := await stream.readline():
            key, _, value = line.decode(errors="replace").strip().partition("=")
            fields[key] = value
            if key != "progress":
                continue
            report = parse_report(fields)
            fields = {}
            if report.advanced_from(self.last):
                self.advanced_at = time.monotonic()
            self.last = report
            try:
                self.on_report(report)
            except Exception:  # noqa: BLE001 - a broken listener must not break the cut
                log.exception("progress listener failed")


class ProcessResult(msgspec.Struct, frozen=True):
    returncode: int
    stdout: bytes
    stderr: bytes


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGKILL when the worker dies, even by SIGKILL, so no FFmpeg outlives its worker."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


async def run_process(args: list[str], timeout: float, watch: Watch | None = None) -> ProcessResult:
    """Run `args` with no stdin; kill its whole process group on timeout (raises Deadline) or cancellation. With
    `watch`, stdout is FFmpeg's `-progress` output, read as it comes (the result's stdout is then empty), and the
    group is also killed when the watch sees no progress for its `stall_after` seconds (raises Stalled)."""
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    try:
        if watch is None:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
        else:
            stdout, stderr = await _watched(process, timeout, watch)
    except (asyncio.TimeoutError, asyncio.CancelledError, Stalled) as error:
        _kill_group(process.pid)
        await asyncio.shield(_reap(process))
        if isinstance(error, asyncio.TimeoutError):
            raise Deadline(f"{Path(args[0]).name} ran for more than {timeout:g} s and was stopped") from None
        raise
    # The leader exited; make sure nothing it started lingers (a wrapper's children).
    _kill_group(process.pid)
    return ProcessResult(process.returncode or 0, stdout, stderr)


async def _watched(process: asyncio.subprocess.Process, timeout: float, watch: Watch) -> tuple[bytes, bytes]:
    """`communicate()` with stdout read by `watch`; TimeoutError past `timeout`, Stalled when the watch says so."""
    assert process.stdout is not None and process.stderr is not None
    finished = asyncio.ensure_future(
        asyncio.gather(watch.read(process.stdout), process.stderr.read(), process.wait())
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise asyncio.TimeoutError
            if now >= watch.stalled_at:
                raise Stalled(f"FFmpeg reported no progress for {watch.stall_after:g} s and was stopped")
            await asyncio.wait([finished], timeout=min(deadline, watch.stalled_at) - now)
            if finished.done():
                _, stderr, _ = finished.result()
                return b"", stderr
    finally:
        if not finished.done():
            finished.cancel()
            await asyncio.gather(finished, return_exceptions=True)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def _reap(process: asyncio.subprocess.Process) -> None:
    try:
        await asyncio.wait_for(process.wait(), 5)
    except asyncio.TimeoutError:
        pass


_NOISE = re.compile(r"^\[[^\]]+ @ 0x[0-9a-f]+\]\s*")


def _tail(stderr: bytes, lines: int = 2, path: Path | None = None) -> str:
    """FFmpeg's last words, without its internal addresses and our absolute paths."""
    text = stderr.decode(errors="replace").strip().splitlines()
    cleaned = []
    for line in text[-lines:]:
        line = _NOISE.sub("", line.strip())
        if path is not None:
            line = line.replace(f"{path}: ", "").replace(str(path), path.name)
        cleaned.append(line)
    return "; ".join(cleaned) or "no output"


_DURATION = re.compile(rb"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")


async def probe(path: Path, *, ffmpeg: str, ffprobe: str | None, timeout: float = 30.0) -> MediaInfo:
    """Duration and presence of video. Raises ExtractionError(not_a_video / source_unreadable)."""
    if ffprobe:
        result = await run_process(
            [ffprobe, "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)], timeout
        )
        if result.returncode != 0:
            raise ExtractionError("not_a_video", f"{path.name} is not a video FFmpeg can read ({_tail(result.stderr, path=path)}).")
        try:
            data = json.loads(result.stdout)
            has_video = any(s.get("codec_type") == "video" for s in data.get("streams", []))
            duration = float(data.get("format", {}).get("duration") or 0.0)
        except (ValueError, TypeError):
            raise ExtractionError("not_a_video", f"{path.name} is not a video FFmpeg can read.") from None
        return MediaInfo(duration=duration, has_video=has_video)
    # No ffprobe (the pip-shipped ffmpeg): `ffmpeg -i` prints the container's header on stderr.
    result = await run_process([ffmpeg, "-hide_banner", "-nostdin", "-i", str(path)], timeout)
    match = _DURATION.search(result.stderr)
    if b"Invalid data found" in result.stderr or b"Stream #" not in result.stderr:
        raise ExtractionError("not_a_video", f"{path.name} is not a video FFmpeg can read ({_tail(result.stderr, path=path)}).")
    duration = 0.0
    if match:
        hours, minutes, seconds = match.groups()
        duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return MediaInfo(duration=duration, has_video=re.search(rb"Stream #\S+.*: Video:", result.stderr) is not None)


def cut_command(
    ffmpeg: str, source: Path, start: float, end: float, mode: str, target: Path, *, progress: bool = False
) -> list[str]:
    """The FFmpeg arguments for one clip: input seeking (never reads the source before `start`), then either a
    stream copy (fast, starts at the keyframe before `start`) or a frame-accurate re-encode. `progress`: FFmpeg
    writes its `-progress` blocks to stdout."""
    stream = ffmpeg_python.input(str(source), ss=f"{start:.3f}", t=f"{end - start:.3f}")
    if mode == "accurate":
        output = stream.output(
            str(target), vcodec="libx264", preset="veryfast", acodec="aac", movflags="+faststart", f="mp4"
        )
    else:
        output = stream.output(
            str(target), c="copy", avoid_negative_ts="make_zero", movflags="+faststart", f="mp4"
        )
    flags = ["-hide_banner", "-nostdin", "-loglevel", "error", *(["-progress", "pipe:1"] if progress else [])]
    return output.global_args(*flags).overwrite_output().compile(cmd=ffmpeg)


async def cut(
    *, ffmpeg: str, source: Path, start: float, end: float, mode: str, target: Path, timeout: float,
    watch: Watch | None = None,
) -> None:  # fmt: skip
    """Run the cut. Raises Deadline past `timeout`, Stalled when `watch` sees no progress for its `stall_after`
    seconds, ExtractionError(ffmpeg_exit / ffmpeg_killed) on failure."""
    command = cut_command(ffmpeg, source, start, end, mode, target, progress=watch is not None)
    result = await run_process(command, timeout, watch)
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name if -result.returncode in signal.valid_signals() else "?"
        raise ExtractionError("ffmpeg_killed", f"FFmpeg was killed by signal {name} while cutting the clip")
    if result.returncode != 0:
        raise ExtractionError(
            "ffmpeg_exit", f"FFmpeg exited with code {result.returncode}: {_tail(result.stderr)}"
        )
