"""The metrics projection's follower: one at a time across every worker and API process (a PostgreSQL advisory lock
on its own connection, like the reactor), it projects the log into `projections/metrics.py`'s tables every second
(not on every NOTIFY: a write transaction after every append measurably disturbed `cliplog rebuild`'s swap in
tests/integration/test_rebuild.py, 2 failures in 4 runs, none in 8 when polling; the cause is not understood yet)."""

from __future__ import annotations

from handlers import reactor
from projections import metrics
from usecases.services import Services
from eventlog import locks

LEADER_LOCK = locks.METRICS_FOLLOWER


async def project_once(services: Services) -> bool:
    """One batch; True while there is more to read."""
    return await metrics.catch_up(services.pool) == metrics.BATCH


async def follow(services: Services) -> None:
    await reactor.run_as_leader(services, LEADER_LOCK, project_once, 1.0, "metrics", wake_on_notify=False)
