"""`cliplog serve`'s garbage-collector policy (runtime/heap.py): long-lived growth is frozen out of full
collections, and frozen objects are collected again once the heap has grown by half."""

from __future__ import annotations

import gc

from runtime.heap import HeapFreezer


def frozen_share(objects: list) -> float:
    """The share of `objects` in the permanent generation: gc.get_objects() lists only the collected generations.
    (The freeze count alone is no witness: other threads of the process free frozen objects of their own.)"""
    collected = {id(tracked) for tracked in gc.get_objects()}
    return sum(id(o) not in collected for o in objects) / len(objects)


def test_growth_is_frozen_and_a_grown_heap_is_collected_again():
    # Other threads of the test process (an in-process API's loop, the Redis claim's refresher) allocate too: the
    # thresholds are far above what they allocate between two adjacent steps, the burst far above the thresholds.
    freezer = HeapFreezer(grown=50_000, refresh_growth=100.0)
    try:
        freezer.refresh()
        kept = [[i] for i in range(200_000)]  # a burst of long-lived (tracked) objects
        freezer.step()
        assert freezer.freezes == 1 and frozen_share(kept) == 1.0
        freezer.step()  # no growth since: nothing to do
        assert freezer.freezes == 1 and freezer.refreshes == 0
        cycle: list = []
        cycle.append(cycle)  # cyclic garbage, frozen below: only a refresh can collect it
        del cycle
        freezer.refresh_growth = 1.0  # the heap counts as grown by enough
        freezer.step()
        assert freezer.refreshes == 1
        assert frozen_share(kept) == 1.0  # the survivors are frozen again
    finally:
        gc.unfreeze()
        del kept
