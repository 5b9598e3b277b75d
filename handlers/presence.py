"""Worker presence: each worker keeps the Redis key `presence_prefix(epoch) + worker_id` alive (expiring after
`PRESENCE_TTL` seconds), holding how many attempts it takes at once (`handlers.worker.holds`: two per FFmpeg slot);
the health check counts those of its own log, the dispatcher adds up what they hold. Here, so that health need not
import the worker."""

from __future__ import annotations

from uuid import UUID

PRESENCE_PREFIX = "cliplog:worker:"
PRESENCE_TTL = 15


def presence_prefix(epoch: UUID | None) -> str:
    """Presence keys of the workers of the log `epoch` (of any log for None, when the database is unknown)."""
    return PRESENCE_PREFIX + (f"{epoch}:" if epoch is not None else "")
