"""The error tree. Every error a caller can see is one of these; the HTTP edge maps them to status codes.

CliplogError
├── InvalidInput          bad input from a client (400)
├── NotFound              no such clip or project, or not the caller's (404)
├── Conflict              the request contradicts the clip's state (409)
│   └── VersionConflict   an append expected a stream version that is no longer current
├── StaleAttempt          a worker's attempt is no longer the current one; its result is discarded
├── CursorFromAnotherLog  a feed cursor minted by a different event log (410)
└── Unavailable           a dependency (PostgreSQL, Redis) is down (503)
"""

from __future__ import annotations


class CliplogError(Exception):
    """Base of every error cliplog raises on purpose."""

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidInput(CliplogError):
    pass


class NotFound(CliplogError):
    pass


class Conflict(CliplogError):
    pass


class VersionConflict(Conflict):
    def __init__(self, stream: str, expected: int) -> None:
        super().__init__(
            f"stream {stream!r} is no longer at version {expected}: another writer appended first",
            stream=stream,
            expected_version=expected,
        )


class StaleAttempt(CliplogError):
    """A start or an outcome for an attempt that is not the clip's current one (timed out, superseded)."""


class CursorFromAnotherLog(CliplogError):
    pass


class Unavailable(CliplogError):
    pass
