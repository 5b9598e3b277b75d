"""The admission rule (domain/dispatch.py): priority with a guaranteed batch share, owners then projects in turn,
oldest first within a project, the concurrency limits, and the queue position that follows from them."""

from __future__ import annotations

from collections import Counter

from domain.dispatch import BATCH_EVERY, InFlight, Limits, Turns, Waiting, admission_order, queue_position, select


def waiting(owner: str, project: str, n: int, *, priority: str = "interactive", first: int = 0) -> list[Waiting]:
    return [
        Waiting(project_id=project, clip_id=f"{project}-{i}", run=1, attempt=1, owner=owner, priority=priority,
                order=first + i)  # fmt: skip
        for i in range(n)
    ]


def owners(items: list[Waiting]) -> list[str]:
    return [w.owner for w in items]


def test_one_owner_is_served_oldest_first():
    backlog = waiting("alice", "a", 5)
    assert [w.clip_id for w in select(list(reversed(backlog)), [], 3).admit] == ["a-0", "a-1", "a-2"]


def test_a_newcomer_behind_a_backlog_is_admitted_with_the_next_free_slot():
    backlog = waiting("alice", "a", 200)
    newcomer = waiting("bob", "b", 1, first=1000)
    in_flight = [InFlight("alice", "a")] * 2  # both slots busy with alice's work
    assert select(backlog + newcomer, in_flight, 1).admit == newcomer
    assert queue_position(newcomer[0].key, backlog + newcomer, in_flight) == 0


def test_owners_take_turns_and_then_projects_within_an_owner():
    items = waiting("alice", "a1", 6) + waiting("alice", "a2", 6, first=100) + waiting("bob", "b", 6, first=200)
    order = [w for w, _, _ in admission_order(items, [])]
    assert owners(order[:6]) == ["alice", "bob"] * 3
    alice = [w.project_id for w in order if w.owner == "alice"]
    assert alice[:6] == ["a1", "a2"] * 3


def test_with_one_slot_owners_alternate_though_each_has_none_in_flight_when_it_frees():
    """The slot frees when its attempt ends, so every owner has nothing in flight at each choice: only the turns
    (who was served last) make it round-robin instead of draining the oldest backlog first."""
    items = waiting("alice", "a", 6) + waiting("bob", "b", 3, first=100)
    turns, served = Turns(), []
    for _ in range(6):
        selection = select(items, [], 1, turns=turns)
        (chosen,) = selection.admit
        items.remove(chosen)  # it ran and ended: the slot is free again
        turns = selection.turns
        served.append(chosen.owner)
    assert served == ["alice", "bob"] * 3


def test_the_least_loaded_owner_goes_first_and_ties_go_to_the_oldest_request():
    items = waiting("alice", "a", 3) + waiting("bob", "b", 3, first=10) + waiting("carol", "c", 3, first=20)
    in_flight = [InFlight("alice", "a")] * 2 + [InFlight("bob", "b")]
    assert owners(select(items, in_flight, 4).admit) == ["carol", "bob", "carol", "alice"]


def test_limits_hold_per_project_and_per_owner():
    items = waiting("alice", "a1", 10) + waiting("alice", "a2", 10, first=100) + waiting("bob", "b", 10, first=200)
    chosen = select(items, [InFlight("alice", "a1")], 10, Limits(project=2)).admit
    projects = Counter(w.project_id for w in chosen)
    assert projects == {"a1": 1, "a2": 2, "b": 2}
    chosen = select(items, [InFlight("alice", "a1")], 10, Limits(owner=3)).admit
    assert Counter(owners(chosen)) == {"alice": 2, "bob": 3}
    assert select(items, [InFlight("bob", "b")] * 3, 10, Limits(owner=3, project=1)).admit == [items[0], items[10]]


def test_interactive_goes_first_and_batch_gets_one_admission_in_every_batch_every():
    batch = waiting("alice", "bulk", 50, priority="batch")
    interactive = waiting("bob", "ui", 50, priority="interactive", first=100)
    chosen = select(batch + interactive, [], 4 * BATCH_EVERY).admit
    kinds = [w.priority for w in chosen]
    assert kinds == (["interactive"] * (BATCH_EVERY - 1) + ["batch"]) * 4
    # the share carries over from one selection to the next, one admission at a time
    since, kinds = 0, []
    for _ in range(4 * BATCH_EVERY):
        selection = select(batch + interactive, [], 1, since_batch=since)
        since = selection.since_batch
        kinds.append(selection.admit[0].priority)
    assert kinds.count("batch") == 4 and "batch" * 2 not in "".join(k[0] for k in kinds)


def test_batch_alone_is_admitted_at_full_speed_and_interactive_alone_too():
    assert len(select(waiting("a", "p", 9, priority="batch"), [], 9).admit) == 9
    assert len(select(waiting("a", "p", 9), [], 9).admit) == 9


def test_nothing_is_admitted_without_free_slots_or_waiting_work():
    assert select(waiting("a", "p", 3), [], 0).admit == []
    assert select([], [], 5).admit == []


def test_queue_position_counts_what_the_rule_admits_first():
    items = waiting("alice", "a", 10) + waiting("bob", "b", 2, first=100)
    assert queue_position(items[0].key, items, []) == 0
    # bob's second clip: alice's oldest, bob's first, alice's second, then it
    assert queue_position(items[11].key, items, []) == 3
    # a batch clip waits behind BATCH_EVERY - 1 interactive ones
    bulk = waiting("carol", "c", 1, priority="batch", first=5)
    assert queue_position(bulk[0].key, items + bulk, []) == BATCH_EVERY - 1
    assert queue_position(("x", "y", 1, 1), items, []) is None


def test_the_dispatch_settings_are_checked_at_start():
    import pytest

    from runtime.settings import ConfigError, load

    base = {"CLIPLOG_FFMPEG": "ffmpeg"}
    settings = load(base)
    assert (settings.dispatch, settings.project_concurrency, settings.owner_concurrency) == ("fair", None, None)
    settings = load({**base, "CLIPLOG_DISPATCH": "fifo", "CLIPLOG_PROJECT_CONCURRENCY": "2",
                     "CLIPLOG_OWNER_CONCURRENCY": "5"})  # fmt: skip
    assert (settings.dispatch, settings.project_concurrency, settings.owner_concurrency) == ("fifo", 2, 5)
    for bad in ({"CLIPLOG_DISPATCH": "lifo"}, {"CLIPLOG_PROJECT_CONCURRENCY": "0"},
                {"CLIPLOG_OWNER_CONCURRENCY": "1.5"}):  # fmt: skip
        with pytest.raises(ConfigError):
            load({**base, **bad})
