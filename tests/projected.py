"""Waiting for the asynchronous metrics projection (projections/metrics.py) in tests that read `/metrics` or
health's rates right after appending: its follower runs in the app (and in workers), a moment behind the log."""

from __future__ import annotations

import asyncio

import asyncpg

from projections import metrics


async def metrics_projected(pool: asyncpg.Pool, timeout: float = 20) -> None:
    """Until the projection has counted the whole log."""
    async with asyncio.timeout(timeout):
        while await metrics.lag(pool):
            await asyncio.sleep(0.02)
