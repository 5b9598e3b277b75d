"""Small asyncio helpers."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for `event` at most `timeout` seconds; True if it was set.

    Uses `asyncio.timeout`, not `asyncio.wait_for`: on Python 3.11 `wait_for` can swallow a cancellation that
    arrives as the event is set, and a loop built on it then never stops.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False


def reraise_if_cancelled() -> None:
    """Call in a retry loop's `except` block: a cancellation that a library turned into a timeout or connection
    error on its way out (Python 3.11's `asyncio.timeout` can, when a cancel and a deadline coincide) must still end
    the loop instead of being retried."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
