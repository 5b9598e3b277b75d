"""Worker presence: each worker keeps the Redis key `presence_prefix(epoch) + worker_id` alive (expiring after
`PRESENCE_TTL` seconds), holding its concurrency; the health check counts those of its own log, the dispatcher
adds up their slots. Here, so that health need not import the
worker."""

from __future__ import annotations

from uuid import UUID

PRESENCE_PREFIX = "cliplog:worker:"
PRESENCE_TTL = 15


def presence_prefix(epoch: UUID | None) -> str:
    """Presence keys of the workers of the log `epoch` (of any log for None, when the database is unknown)."""
    return PRESENCE_PREFIX + (f"{epoch}:" if epoch is not None else "")
