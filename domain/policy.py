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
}


def is_retryable(code: str) -> bool:
    return RETRYABLE.get(code, True)
