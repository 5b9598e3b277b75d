"""The retry policy: exponential backoff with a cap and equal jitter; error classification."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.policy import RETRYABLE, RetryPolicy, backoff_seconds, is_retryable

POLICY = RetryPolicy(max_attempts=10, base_seconds=10.0, cap_seconds=600.0)
jitters = st.floats(0.0, 1.0, exclude_max=True)
attempts = st.integers(1, 64)


def full(policy: RetryPolicy, attempt: int) -> float:
    return min(policy.cap_seconds, policy.base_seconds * 2 ** (attempt - 1))


def test_backoff_doubles_then_stops_at_the_cap():
    assert [backoff_seconds(POLICY, n, 1.0) for n in range(1, 10)] == [10, 20, 40, 80, 160, 320, 600, 600, 600]
    assert [backoff_seconds(POLICY, n, 0.0) for n in range(1, 10)] == [5, 10, 20, 40, 80, 160, 300, 300, 300]


def test_jitter_outside_zero_one_is_clamped():
    assert backoff_seconds(POLICY, 2, -3.0) == backoff_seconds(POLICY, 2, 0.0) == 10.0
    assert backoff_seconds(POLICY, 2, 7.0) == backoff_seconds(POLICY, 2, 1.0) == 20.0


def test_attempt_zero_or_below_counts_as_the_first():
    assert backoff_seconds(POLICY, 0, 1.0) == backoff_seconds(POLICY, -5, 1.0) == 10.0


@given(attempts, jitters)
def test_backoff_lies_between_half_and_all_of_the_capped_exponential(attempt, jitter):
    delay = backoff_seconds(POLICY, attempt, jitter)
    assert full(POLICY, attempt) / 2 <= delay <= full(POLICY, attempt)
    assert delay <= POLICY.cap_seconds


@given(attempts, jitters, jitters)
def test_backoff_never_shrinks_before_the_cap_whatever_the_jitter(attempt, jitter_a, jitter_b):
    if full(POLICY, attempt + 1) < POLICY.cap_seconds:
        assert backoff_seconds(POLICY, attempt + 1, jitter_b) >= backoff_seconds(POLICY, attempt, jitter_a)


@given(attempts, jitters, jitters)
def test_more_jitter_never_means_less_delay(attempt, jitter_a, jitter_b):
    low, high = sorted((jitter_a, jitter_b))
    assert backoff_seconds(POLICY, attempt, low) <= backoff_seconds(POLICY, attempt, high)


@pytest.mark.parametrize(("code", "retryable"), sorted(RETRYABLE.items()))
def test_known_error_codes(code, retryable):
    assert is_retryable(code) is retryable


def test_unknown_error_codes_are_retryable():
    assert is_retryable("never_heard_of_it")
