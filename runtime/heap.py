"""Keeping CPython's full garbage collections short in a long-running server (`cliplog serve`).

A full collection walks every tracked object outside the permanent generation. When 1,000 WebSocket clients
connect, about 120,000 new objects live on (sockets, protocols, tasks, subscriptions); the next full collection
then stops the process for about 100 ms, and every subscriber's next event waits for it (issue 9.3: p99 62-123 ms
from commit to arrival). `HeapFreezer` moves what has lived through a second into the permanent generation
(`gc.freeze()`, as after start-up) whenever the heap has grown since the last freeze, so full collections only
walk what is younger than that: short pauses, during the burst itself rather than after it.

What it costs: cyclic garbage among frozen objects is not collected while frozen (acyclic garbage still goes,
by reference counting, as soon as it is unreferenced). So when the heap has grown by half since the last full
collection, the freezer unfreezes everything, collects once (one full pause, as CPython would have taken anyway)
and freezes the survivors: frozen garbage is bounded by half the live heap.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time

log = logging.getLogger("cliplog.heap")


class HeapFreezer:
    """The policy of the module docstring; `run()` applies it every `interval` seconds, in the event loop's thread
    (a full collection runs finalizers, which must not run beside the loop in another thread)."""

    def __init__(self, interval: float = 1.0, grown: int = 20_000, refresh_growth: float = 1.5) -> None:
        self.interval = interval
        self.grown = grown  # allocated blocks (about objects) of growth worth a freeze
        self.refresh_growth = refresh_growth
        self.freezes = 0
        self.refreshes = 0
        self._frozen_at = self._collected_at = 0

    def refresh(self) -> None:
        """A full collection over everything, the survivors frozen."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._frozen_at = self._collected_at = sys.getallocatedblocks()

    def step(self) -> None:
        blocks = sys.getallocatedblocks()
        if blocks >= self._collected_at * self.refresh_growth:
            began = time.perf_counter()
            self.refresh()
            self.refreshes += 1
            log.info("heap: collected the frozen objects too (%.0f ms)", (time.perf_counter() - began) * 1000)
        elif blocks - self._frozen_at >= self.grown:
            gc.freeze()
            self._frozen_at = blocks
            self.freezes += 1
        elif blocks < self._frozen_at:
            self._frozen_at = blocks  # it shrank: count growth from here

    async def run(self) -> None:
        self.refresh()
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.step()
            except Exception:  # the policy must never take the server down
                log.exception("heap freezer step failed")
