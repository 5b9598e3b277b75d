"""Why a clip is where it is: the retry rule's decision after an outcome as a value, and the words for it.

`after_outcome` is the one retry rule. `domain.clip` calls it in `decide` (does an automatic request follow the
outcome?) and in `evolve` (which status the outcome leaves), and the replay and history tools print the same value,
so what they say is what the service decided, never a second copy of the rules.
"""

from __future__ import annotations

from typing import Literal

import msgspec

# The error code of an attempt that a worker handed back when it was shut down (a deploy).
HANDED_BACK = "worker_shutdown"

Why = Literal["retryable", "budget_used_up", "not_retryable", "stopped_by_person", "handed_back"]


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What the retry rule decided after attempt `attempt` of `max_attempts` ended with error `code`."""

    why: Why
    attempt: int
    max_attempts: int
    code: str

    @property
    def auto_retry(self) -> bool:
        """Another automatic attempt of the same run follows, after a backoff."""
        return self.why == "retryable"

    @property
    def retry_eligible(self) -> bool:
        """Another attempt follows without a person (after a backoff, or at once for a hand-back)."""
        return self.why in ("retryable", "handed_back")

    def explain(self) -> str:
        a, m, code = self.attempt, self.max_attempts, self.code
        match self.why:
            case "retryable":
                return (
                    f"retry-eligible: {code} may not happen again, and attempt {a} of {m} leaves "
                    f"{m - a} automatic attempt(s), so attempt {a + 1} follows after a backoff"
                )
            case "budget_used_up":
                return (
                    f"not retried: the budget is used up (attempt {a} of {m} was the last automatic attempt); "
                    "a person may retry"
                )
            case "not_retryable":
                return f"not retried: {code} is an error no retry can fix; a person may retry once the cause is fixed"
            case "stopped_by_person":
                if code == "cancelled":
                    return "not retried automatically: a person stopped it (cancelled); a person's retry starts a new run"
                return "not retried automatically: a person stopped it"
            case "handed_back":
                return (
                    "handed back by a deploy: the worker was shut down during the attempt, so another attempt "
                    "follows at once and does not use up the budget"
                )
        raise ValueError(self.why)


def after_outcome(
    *, attempt: int, max_attempts: int, code: str, retryable: bool, stopped_by_person: bool = False
) -> Decision:
    """The retry rule: a hand-back is always tried again at once; a stop by a person, an error no retry can fix and
    a used-up budget are not retried automatically; anything else is."""
    why: Why
    if code == HANDED_BACK:
        why = "handed_back"
    elif stopped_by_person:
        why = "stopped_by_person"
    elif not retryable:
        why = "not_retryable"
    elif attempt >= max_attempts:
        why = "budget_used_up"
    else:
        why = "retryable"
    return Decision(why=why, attempt=attempt, max_attempts=max_attempts, code=code)
