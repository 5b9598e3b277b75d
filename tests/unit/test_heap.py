"""`cliplog serve`'s garbage-collector policy (runtime/heap.py): long-lived growth is frozen out of full
collections, and frozen objects are collected again once the heap has grown by half."""

from __future__ import annotations

import gc

from runtime.heap import HeapFreezer


def test_growth_is_frozen_and_a_grown_heap_is_collected_again():
    # Other threads of the test process (an in-process API's loop, the Redis claim's refresher) allocate too: the
    # thresholds are far above what they allocate between two adjacent steps, the burst far above the thresholds.
    freezer = HeapFreezer(grown=50_000, refresh_growth=100.0)
    try:
        freezer.refresh()
        frozen = gc.get_freeze_count()
        kept = [[i] for i in range(200_000)]  # a burst of long-lived (tracked) objects
        freezer.step()
        assert freezer.freezes == 1 and gc.get_freeze_count() >= frozen + len(kept)
        freezer.step()  # no growth since: nothing to do
        assert freezer.freezes == 1 and freezer.refreshes == 0
        cycle: list = []
        cycle.append(cycle)  # cyclic garbage, frozen below: only a refresh can collect it
        del cycle
        freezer.refresh_growth = 1.0  # the heap counts as grown by enough
        freezer.step()
        assert freezer.refreshes == 1
        assert gc.get_freeze_count() >= len(kept)  # the survivors are frozen again
    finally:
        gc.unfreeze()
        del kept
