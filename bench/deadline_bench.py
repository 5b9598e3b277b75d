"""How long a cut takes here, by mode and clip length: the measurements behind the attempt deadline
(`domain.policy.attempt_deadline_seconds`).

    python -m bench.deadline_bench [--quick] [--height 720] [--lengths 2,10,30,60] [--rounds 3]

It generates a source (a moving test pattern with a tone, H.264/AAC, one keyframe a second, `--height` lines),
then cuts clips of each length from its middle with the worker's own FFmpeg command (`handlers.ffmpeg.cut_command`),
in both modes, interleaved (copy, accurate, copy, accurate, ...), and prints per mode and length the median time
(min–max) and the deadline the domain gives that attempt, with the headroom ratio deadline / median. It ends with a
least-squares line `seconds = a + b * length` per mode: `a` is the process start, `b` the cost of a second of clip.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import apply_defaults, cell, fmt
from domain.policy import attempt_deadline_seconds
from handlers.ffmpeg import cut_command
from runtime.settings import find_ffmpeg

MODES = ("copy", "accurate")


def make_source(ffmpeg: str, target: Path, seconds: float, height: int) -> Path:
    width = height * 16 // 9
    subprocess.run(
        [
            ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
            "-t", f"{seconds:g}", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
            "-c:a", "aac", "-shortest", "-f", "mp4", str(target),
        ],
        check=True,
    )
    return target


def time_cut(ffmpeg: str, source: Path, start: float, length: float, mode: str, target: Path) -> float:
    began = time.perf_counter()
    subprocess.run(cut_command(ffmpeg, source, start, start + length, mode, target), check=True)
    elapsed = time.perf_counter() - began
    target.unlink()
    return elapsed


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares `y = a + b x`."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lengths 2,10,30 and 2 rounds")
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--lengths", type=lambda s: [float(x) for x in s.split(",")])
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--cap", type=float, default=600.0, help="CLIPLOG_ATTEMPT_TIMEOUT, the deadline's cap")
    args = apply_defaults(
        parser.parse_args(argv), {"lengths": [2.0, 10.0, 30.0], "rounds": 2}, {"lengths": [2.0, 10.0, 30.0, 60.0], "rounds": 3}
    )
    ffmpeg = find_ffmpeg(os.environ)
    with tempfile.TemporaryDirectory(prefix="cliplog-deadline-bench-") as scratch:
        root = Path(scratch)
        longest = max(args.lengths)
        print(f"making a {longest + 20:g} s {args.height}p source...", file=sys.stderr)
        source = make_source(ffmpeg, root / "source.mp4", longest + 20, args.height)
        times: dict[tuple[str, float], list[float]] = {(m, n): [] for m in MODES for n in args.lengths}
        for round_ in range(args.rounds):
            for length in args.lengths:
                for mode in MODES:
                    elapsed = time_cut(ffmpeg, source, 10.0, length, mode, root / "clip.mp4")
                    times[(mode, length)].append(elapsed)
                    print(f"round {round_ + 1}: {mode} {length:g} s: {elapsed:.3f} s", file=sys.stderr)
    print(f"\nFFmpeg `{ffmpeg}`, {args.height}p source, {args.rounds} rounds, cap {args.cap:g} s\n")
    print("| mode | clip length (s) | cut time (s), median (min–max) | deadline (s) | deadline / median |")
    print("| --- | --- | --- | --- | --- |")
    for mode in MODES:
        for length in args.lengths:
            measured = times[(mode, length)]
            deadline = attempt_deadline_seconds(length, mode, args.cap)
            print(f"| {mode} | {length:g} | {cell(measured)} | {fmt(deadline)} | {fmt(deadline / statistics.median(measured))} |")
    print()
    for mode in MODES:
        a, b = fit([(length, t) for (m, length), ts in times.items() if m == mode for t in ts])
        print(f"{mode}: seconds = {a:.3f} + {b:.4f} * length")


if __name__ == "__main__":
    main()
