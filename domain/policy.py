"""Retry policy and error classification: pure functions, randomness passed in as `jitter` in [0, 1)."""

from __future__ import annotations

import msgspec


class RetryPolicy(msgspec.Struct, frozen=True):
    max_attempts: int = 3
    base_seconds: float = 10.0
    cap_seconds: float = 600.0


def backoff_seconds(policy: RetryPolicy, failed_attempt: int, jitter: float) -> float:
    """Delay before the attempt after `failed_attempt` (1-based): exponential, capped, with equal jitter.

    The delay lies in [half, full] of `min(cap, base * 2 ** (failed_attempt - 1))`, so it always grows with the
    attempt number until the cap, and two clips that failed together do not retry together.
    """
    full = min(policy.cap_seconds, policy.base_seconds * 2 ** min(max(0, failed_attempt - 1), 62))
    return full * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))


# Error codes and whether another attempt could succeed. Anything unknown is retryable: a retry is cheap,
# a clip failed for good by mistake is not. A result that fails validation would come out the same again (the same
# FFmpeg on the same source), so `output_invalid` is not retried.
RETRYABLE: dict[str, bool] = {
    "source_missing": False,
    "source_unreadable": False,
    "not_a_video": False,
    "range_past_end": False,
    "ffmpeg_exit": True,
    "ffmpeg_killed": True,
    "output_invalid": False,
    "timed_out": True,
    "worker_lost": True,
    "internal": True,
    # Object storage (storage/base.py): unreachable, 5xx or a timeout may pass; a refusal or a missing bucket will not.
    "storage_unavailable": True,
    "storage_denied": False,
}


def is_retryable(code: str) -> bool:
    return RETRYABLE.get(code, True)


# The deadline of one attempt, scaled to its work. A cut costs a process start and a probe, then a time per second of
# clip that depends on the mode. Measured here (`python -m bench.deadline_bench`, 720p H.264 source, Debian's FFmpeg
# 5.1, 2 cores shared with other test runs, two runs on 2026-12-01; bench/README.md has the tables): a copy costs
# 0.07-0.2 s up to 10 s of clip and 0.23-0.56 s for 60 s (0.0024-0.0058 s per clip second); an accurate re-encode
# 0.6-2 s for 2 s of clip, 3.9-8.2 s for 10 s, 41-56 s for 60 s (max 98 s; 0.64-1.1 s per clip second, growing with
# the load). The deadline allows START_FLOOR_SECONDS for the fixed part (process start and probe on a loaded machine
# or a remote source) plus HEADROOM times the busier run's cost of the clip's length (a 1080p source has 2.25 times
# the pixels of 720p, and the load varies by as much again), and never more than the cap (CLIPLOG_ATTEMPT_TIMEOUT).
# A stream copy does almost no work but must read the clip's bytes, so its figure is the transfer, not the local
# measurement: a 20 Mbit/s source read at 400 Mbit/s (a remote source, or a busy disk) takes 0.05 s per clip second.
# A hung FFmpeg is caught long before by its lease or its progress; the deadline is the last bound.
START_FLOOR_SECONDS = 30.0
HEADROOM = 4.0
SECONDS_PER_CLIP_SECOND: dict[str, float] = {"copy": 0.05, "accurate": 1.1}


def attempt_deadline_seconds(length: float, mode: str, cap: float) -> float:
    """Seconds an attempt to cut `length` seconds in `mode` may take: the floor plus the scaled work, capped."""
    per_second = SECONDS_PER_CLIP_SECOND.get(mode, SECONDS_PER_CLIP_SECOND["accurate"])
    return min(cap, START_FLOOR_SECONDS + HEADROOM * per_second * max(0.0, length))
