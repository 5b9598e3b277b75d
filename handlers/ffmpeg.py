"""The FFmpeg adapter: probe a file, cut a clip, all as subprocesses that die with their deadline.

Every FFmpeg run is started in its own process group and the whole group is killed on timeout or cancellation,
so a wrapper script or a child blocked on its input cannot outlive the attempt.

A cut runs with `-progress pipe:1`: FFmpeg writes a block of `key=value` lines to its stdout about every 0.5 s
(`out_time_us`, `frame`, `speed`, ..., ending with `progress=continue` or `progress=end`). Each block is handed to
the caller as a `Report`, and a run whose reports stop advancing (no new `out_time`, `frame` or `total_size`) for
`stall_after` seconds is killed like one past its deadline, raising `Stalled` (a kind of `Deadline`).

A failed or timed-out run says what was run and what FFmpeg said: its `command` (the arguments, with URLs' query
strings and credentials and the roots' absolute paths taken out: `redact`) and `stderr_tail` (its last
STDERR_TAIL_LINES lines, redacted the same way), which the worker records in the attempt's outcome.
"""

from __future__ import annotations

import asyncio
import errno
import bisect
import ctypes
import functools
import json
import os
import re
import logging
import shutil
import signal
import subprocess
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


class _Named(msgspec.Struct, frozen=True):
    """A remote input (a presigned URL: a secret) as FFmpeg opens it, and the name it is shown by."""

    url: str
    name: str

    def __str__(self) -> str:
        return self.url


def remote(url: str, name: str) -> _Named:
    """An input FFmpeg reads over HTTP (range requests), shown as `name` in messages (never its URL)."""
    return _Named(url, name)


STDERR_TAIL_LINES = 20
_STDERR_KEEP_BYTES = 64 * 1024  # of a run's stderr, only the end is kept


class Shown(msgspec.Struct, frozen=True):
    """How a run is shown to a person: the absolute paths of `roots` become their names ({"/srv/media": "$MEDIA"})."""

    roots: dict[str, str] = {}


class ExtractionError(Exception):
    """A failure with an error code from domain.policy.RETRYABLE and a message a person understands; `command` and
    `stderr_tail` when FFmpeg was run (redacted)."""

    def __init__(
        self, code: str, message: str, *, command: list[str] | None = None, stderr_tail: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.command = command
        self.stderr_tail = stderr_tail


class Deadline(Exception):
    """The process ran past its time and was killed; `stderr` is what it wrote until then."""

    def __init__(
        self, message: str, *, stderr: bytes = b"", command: list[str] | None = None, stderr_tail: str | None = None
    ) -> None:
        super().__init__(message)
        self.stderr = stderr
        self.command = command
        self.stderr_tail = stderr_tail


class Stalled(Deadline):
    """FFmpeg reported no progress for `stall_after` seconds and was killed (before its deadline)."""


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


_URL = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<credentials>[^/@\s?#]*@)?(?P<rest>[^\s?#]*)(?P<query>[?#]\S*?(?=:?(?:\s|$)))?"
)


def _without_secrets(url: re.Match[str]) -> str:
    return url["scheme"] + (url["rest"] or "") + ("?[redacted]" if url["query"] else "")


def _redact_text(text: str, shown: Shown) -> str:
    """URLs without credentials, query string and fragment (a presigned URL's signature is in its query string);
    the roots' absolute paths as their names."""
    text = _URL.sub(_without_secrets, text)
    for root, name in shown.roots.items():
        text = text.replace(root.rstrip("/") + "/", name + "/")
    return text


def redact(args: list[str], shown: Shown = Shown()) -> list[str]:
    """The arguments as a person may see them: the program's name without its folder, then each argument with
    URLs' secrets and the roots' absolute paths taken out."""
    return [Path(args[0]).name, *(_redact_text(arg, shown) for arg in args[1:])] if args else []


def stderr_tail(stderr: bytes, shown: Shown = Shown(), lines: int = STDERR_TAIL_LINES) -> str | None:
    """The last `lines` lines of stderr, redacted; None when there were none."""
    text = stderr.decode(errors="replace").rstrip().splitlines()[-lines:]
    return _redact_text("\n".join(line.rstrip() for line in text), shown) or None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGKILL when the worker dies, even by SIGKILL, so no FFmpeg outlives its worker."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@functools.cache
def pdeathsig_launcher() -> tuple[str, ...] | None:
    """A prefix that sets PR_SET_PDEATHSIG and execs the command (util-linux's `setpriv --pdeathsig KILL --`), or
    None when there is none (then `_die_with_parent` runs as a `preexec_fn`).

    The prefix costs one small exec (about 0.5 ms). A `preexec_fn` forces Python to fork the whole worker instead of
    vfork'ing it: 6-12 ms per FFmpeg start in a worker of 100 MB (its page tables are copied), most of a copy cut's
    overhead over bare FFmpeg. The signal survives the exec (it is not a set-user-ID binary), and the pid stays the
    same, so the process group, the exit status and a wrapper's `$$` are FFmpeg's own."""
    if sys.platform != "linux":
        return None
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    try:
        probe = subprocess.run(
            [setpriv, "--pdeathsig", "KILL", "--", "true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (setpriv, "--pdeathsig", "KILL", "--") if probe.returncode == 0 else None


def use_pidfd_child_watcher() -> bool:
    """Wait for this process's subprocesses through a pidfd on the running loop (Linux 5.3+) instead of Python
    3.11's default, a thread per subprocess blocked in waitpid (ThreadedChildWatcher): starting that thread took
    about 1.1 ms of each FFmpeg start's 1.5 ms here (0.36 ms with the pidfd; `true` through the setpriv prefix,
    from a process of 120 MB). Python 3.12 picks the pidfd by itself (False then, and where there is none). For a
    process with one event loop that starts every subprocess from its own thread (the worker): the watcher belongs
    to the loop running now, and 3.11's policy attaches it again on every `asyncio.set_event_loop()` in the main
    thread, which forgets the children it waits for (nothing in the worker calls it once its loop runs)."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.get_event_loop_policy().set_child_watcher(watcher)
    return True


async def run_process(args: list[str], timeout: float, watch: Watch | None = None) -> ProcessResult:
    """Run `args` with no stdin; kill its whole process group on timeout (raises Deadline, with the stderr written
    until then) or cancellation. With `watch`, stdout is FFmpeg's `-progress` output, read as it comes (the result's
    stdout is then empty), and the group is also killed when the watch sees no progress for its `stall_after` seconds
    (raises Stalled, with the stderr too). On Linux the process dies with the worker (PR_SET_PDEATHSIG)."""
    launcher = pdeathsig_launcher()
    if launcher is not None and shutil.which(args[0]) is None:  # as exec would: the launcher itself would start
        raise FileNotFoundError(errno.ENOENT, "no such executable", args[0])
    process = await asyncio.create_subprocess_exec(
        *(launcher or ()),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" and launcher is None else None,
    )
    stdout, stderr = bytearray(), bytearray()
    assert process.stdout is not None and process.stderr is not None
    try:
        reading = watch.read(process.stdout) if watch is not None else _drain(process.stdout, stdout)
        await _supervise(
            asyncio.gather(reading, _drain(process.stderr, stderr, _STDERR_KEEP_BYTES), process.wait()), timeout, watch
        )
    except (asyncio.TimeoutError, asyncio.CancelledError, Stalled) as error:
        _kill_group(process.pid)
        await asyncio.shield(_reap(process))
        if isinstance(error, asyncio.TimeoutError):
            raise Deadline(f"{Path(args[0]).name} ran for more than {timeout:g} s and was stopped", stderr=bytes(stderr)) from None
        if isinstance(error, Stalled):
            raise Stalled(str(error), stderr=bytes(stderr)) from None
        raise
    # The leader exited; make sure nothing it started lingers (a wrapper's children).
    _kill_group(process.pid)
    return ProcessResult(process.returncode or 0, bytes(stdout), bytes(stderr))


async def _drain(stream: asyncio.StreamReader, into: bytearray, keep: int | None = None) -> None:
    """Read `stream` to its end into `into`, keeping only its last `keep` bytes when given (so what was read is
    there even when the read is cancelled)."""
    while chunk := await stream.read(65536):
        into.extend(chunk)
        if keep is not None and len(into) > keep:
            del into[: len(into) - keep]


async def _supervise(running: asyncio.Future, timeout: float, watch: Watch | None) -> None:
    """Until `running` is done: TimeoutError past `timeout`, Stalled when `watch` sees no progress for its
    `stall_after` seconds; `running` is cancelled when it is left unfinished."""
    deadline = time.monotonic() + timeout
    try:
        while not running.done():
            now = time.monotonic()
            if now >= deadline:
                raise asyncio.TimeoutError
            wake = deadline
            if watch is not None:
                if now >= watch.stalled_at:
                    raise Stalled(f"FFmpeg reported no progress for {watch.stall_after:g} s and was stopped")
                wake = min(wake, watch.stalled_at)
            await asyncio.wait([running], timeout=wake - now)
        running.result()
    finally:
        if not running.done():
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)


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


def _tail(stderr: bytes, lines: int = 2, path: Path | _Named | None = None) -> str:
    """FFmpeg's last words, without its internal addresses and our absolute paths."""
    text = stderr.decode(errors="replace").strip().splitlines()
    cleaned = []
    for line in text[-lines:]:
        line = _NOISE.sub("", line.strip())
        if path is not None:
            line = line.replace(f"{path}: ", "").replace(str(path), path.name)
        cleaned.append(_URL.sub(_without_secrets, line))  # a presigned URL's signature never reaches a message
    return "; ".join(cleaned) or "no output"


_DURATION = re.compile(rb"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")


async def probe(
    path: Path | _Named, *, ffmpeg: str, ffprobe: str | None, timeout: float = 30.0, shown: Shown = Shown()
) -> MediaInfo:
    """Duration and presence of video. Raises ExtractionError(not_a_video / source_unreadable). A remote input's
    messages name it by its `name`, never by its URL."""
    if ffprobe:
        args = [ffprobe, "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)]
        result = await run_process(args, timeout)
        if result.returncode != 0:
            raise ExtractionError(
                "not_a_video",
                f"{path.name} is not a video FFmpeg can read ({_tail(result.stderr, path=path)}).",
                command=redact(args, shown),
                stderr_tail=stderr_tail(result.stderr, shown),
            )
        try:
            data = json.loads(result.stdout)
            has_video = any(s.get("codec_type") == "video" for s in data.get("streams", []))
            duration = float(data.get("format", {}).get("duration") or 0.0)
        except (ValueError, TypeError):
            raise ExtractionError("not_a_video", f"{path.name} is not a video FFmpeg can read.") from None
        return MediaInfo(duration=duration, has_video=has_video)
    # No ffprobe (the pip-shipped ffmpeg): `ffmpeg -i` prints the container's header on stderr.
    args = [ffmpeg, "-hide_banner", "-nostdin", "-i", str(path)]
    result = await run_process(args, timeout)
    match = _DURATION.search(result.stderr)
    if b"Invalid data found" in result.stderr or b"Stream #" not in result.stderr:
        raise ExtractionError(
            "not_a_video",
            f"{path.name} is not a video FFmpeg can read ({_tail(result.stderr, path=path)}).",
            command=redact(args, shown),
            stderr_tail=stderr_tail(result.stderr, shown),
        )
    duration = 0.0
    if match:
        hours, minutes, seconds = match.groups()
        duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return MediaInfo(duration=duration, has_video=re.search(rb"Stream #\S+.*: Video:", result.stderr) is not None)


_HTTP_OPTIONS: dict[str, frozenset[str]] = {}


def http_options_of(ffmpeg: str) -> frozenset[str]:
    """The options of `ffmpeg`'s HTTP protocol (`ffmpeg -h protocol=http`), asked once per binary. Blocking."""
    if ffmpeg not in _HTTP_OPTIONS:
        import subprocess

        try:
            text = subprocess.run(
                [ffmpeg, "-hide_banner", "-h", "protocol=http"], capture_output=True, text=True, timeout=30
            ).stdout
        except (OSError, subprocess.SubprocessError):
            text = ""
        _HTTP_OPTIONS[ffmpeg] = frozenset(re.findall(r"^\s+-(\w+)\s", text, re.MULTILINE))
    return _HTTP_OPTIONS[ffmpeg]


HTTP_REQUEST_SIZE = 1024 * 1024  # bytes per range request FFmpeg makes of a remote source, where it can bound them
HTTP_INITIAL_REQUEST_SIZE = 64 * 1024  # while it reads the container's headers


def remote_input_options(supported: frozenset[str], io_timeout: float | None) -> dict[str, str]:
    """How FFmpeg reads a remote source: bounded range requests (`request_size`, FFmpeg 7.1+) on one kept-alive
    connection (`multiple_requests`), failing a read that waits longer than `io_timeout` (`rw_timeout`) rather than
    hanging until the stall watch. An FFmpeg without `request_size` asks for `bytes=N-` and drops the connection
    at each seek: what the store had sent ahead by then is read for nothing (measured: a 10 s copy of a 1-hour
    source reads 3.8 MB with bounded requests, 14 MB without, of 131 MB; bench/storage_bench.py)."""
    options: dict[str, str] = {}
    if io_timeout is not None:
        options["rw_timeout"] = str(max(1, int(io_timeout * 1_000_000)))
    if "request_size" in supported:
        options["request_size"] = str(HTTP_REQUEST_SIZE)
    if "initial_request_size" in supported:
        options["initial_request_size"] = str(HTTP_INITIAL_REQUEST_SIZE)
    if "multiple_requests" in supported:
        options["multiple_requests"] = "1"
    return options


def cut_command(
    ffmpeg: str,
    source: Path | _Named,
    start: float,
    end: float,
    mode: str,
    target: Path,
    *,
    progress: bool = False,
    input_options: dict[str, str] | None = None,
) -> list[str]:
    """The FFmpeg arguments for one clip: input seeking (never reads the source before `start`), then either a
    stream copy (fast, starts at the keyframe before `start`) or a frame-accurate re-encode. `progress`: FFmpeg
    writes its `-progress` blocks to stdout. A remote source (`remote(url, name)`) is read over HTTP with range
    requests (FFmpeg seeks by asking for the bytes it needs), with `input_options` (`remote_input_options`)."""
    stream = ffmpeg_python.input(str(source), ss=f"{start:.3f}", t=f"{end - start:.3f}", **(input_options or {}))
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
    *,
    ffmpeg: str,
    source: Path | _Named,
    start: float,
    end: float,
    mode: str,
    target: Path,
    timeout: float,
    shown: Shown = Shown(),
    watch: Watch | None = None,
    input_options: dict[str, str] | None = None,
) -> dict:
    """Run the cut. Raises Deadline past `timeout`, Stalled when `watch` sees no progress for its `stall_after`
    seconds, ExtractionError(ffmpeg_exit / ffmpeg_killed) on failure, all with the redacted command and stderr tail
    (`shown` says which roots to name)."""
    args = cut_command(ffmpeg, source, start, end, mode, target, progress=watch is not None, input_options=input_options)
    try:
        result = await run_process(args, timeout, watch)
    except Deadline as deadline:  # or Stalled: the same kind, told apart by the caller
        raise type(deadline)(
            str(deadline), stderr=deadline.stderr, command=redact(args, shown), stderr_tail=stderr_tail(deadline.stderr, shown)
        ) from None
    said = {"command": redact(args, shown), "stderr_tail": stderr_tail(result.stderr, shown)}
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name if -result.returncode in signal.valid_signals() else "?"
        raise ExtractionError("ffmpeg_killed", f"FFmpeg was killed by signal {name} while cutting the clip", **said)
    if result.returncode != 0:
        raise ExtractionError(
            "ffmpeg_exit", f"FFmpeg exited with code {result.returncode}: {_tail(result.stderr)}", **said
        )
    return said  # what it ran and said, for a caller that finds the result wanting (FFmpeg ends a lost input as EOF)
