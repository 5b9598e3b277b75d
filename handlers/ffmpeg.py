"""The FFmpeg adapter: probe a file, cut a clip, all as subprocesses that die with their deadline.

Every FFmpeg run is started in its own process group and the whole group is killed on timeout or cancellation,
so a wrapper script or a child blocked on its input cannot outlive the attempt.
"""

from __future__ import annotations

import asyncio
import bisect
import ctypes
import json
import os
import re
import signal
import sys
from pathlib import Path

import ffmpeg as ffmpeg_python
import msgspec


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


async def run_process(args: list[str], timeout: float) -> ProcessResult:
    """Run `args` with no stdin; kill its whole process group on timeout (raises Deadline) or cancellation."""
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError) as error:
        _kill_group(process.pid)
        await asyncio.shield(_reap(process))
        if isinstance(error, asyncio.TimeoutError):
            raise Deadline(f"{Path(args[0]).name} ran for more than {timeout:g} s and was stopped") from None
        raise
    # The leader exited; make sure nothing it started lingers (a wrapper's children).
    _kill_group(process.pid)
    return ProcessResult(process.returncode or 0, stdout, stderr)


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


def cut_command(ffmpeg: str, source: Path, start: float, end: float, mode: str, target: Path) -> list[str]:
    """The FFmpeg arguments for one clip: input seeking (never reads the source before `start`), then either a
    stream copy (fast, starts at the keyframe before `start`) or a frame-accurate re-encode."""
    stream = ffmpeg_python.input(str(source), ss=f"{start:.3f}", t=f"{end - start:.3f}")
    if mode == "accurate":
        output = stream.output(
            str(target), vcodec="libx264", preset="veryfast", acodec="aac", movflags="+faststart", f="mp4"
        )
    else:
        output = stream.output(
            str(target), c="copy", avoid_negative_ts="make_zero", movflags="+faststart", f="mp4"
        )
    return output.global_args("-hide_banner", "-nostdin", "-loglevel", "error").overwrite_output().compile(cmd=ffmpeg)


async def cut(
    *, ffmpeg: str, source: Path, start: float, end: float, mode: str, target: Path, timeout: float
) -> None:
    """Run the cut. Raises Deadline past `timeout`, ExtractionError(ffmpeg_exit / ffmpeg_killed) on failure."""
    result = await run_process(cut_command(ffmpeg, source, start, end, mode, target), timeout)
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name if -result.returncode in signal.valid_signals() else "?"
        raise ExtractionError("ffmpeg_killed", f"FFmpeg was killed by signal {name} while cutting the clip")
    if result.returncode != 0:
        raise ExtractionError(
            "ffmpeg_exit", f"FFmpeg exited with code {result.returncode}: {_tail(result.stderr)}"
        )
