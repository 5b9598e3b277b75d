"""Admission: which waiting attempts go to the workers next. Pure: the dispatcher (handlers/dispatcher.py) reads the
waiting attempts and what is in flight from PostgreSQL and the queue, and asks `select` how many of which to admit.

The rule, one admission at a time:

1. Priority. Interactive work goes first; while batch work waits too, at least one admission in every
   `BATCH_EVERY` is batch (after `BATCH_EVERY - 1` interactive admissions in a row, the next is batch), so batch
   work never starves.
2. Owners in turn: among the owners with an attempt of that priority that may be admitted, the one with the fewest
   attempts in flight (running, or admitted and not started yet) goes next; a tie goes to the owner served least
   recently (`Turns`: never served first, then by their last admission), then to the one whose oldest such attempt
   was requested first. With equal loads this is round-robin, even with one worker slot (where every owner has
   none in flight whenever it frees); an owner arriving behind another's backlog is served as soon as a slot frees.
3. Projects in turn within that owner, by the same rule.
4. Within the project, the oldest request first.

Limits: an owner (project) with `Limits.owner` (`Limits.project`) attempts in flight gets none admitted until one of
them ends. Attempts not yet due (a retry's `not_before`) are not given to this module at all.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Iterable, Iterator

import msgspec

from domain.events import Priority

BATCH_EVERY = 4
PRIORITIES: tuple[Priority, ...] = ("interactive", "batch")


class Waiting(msgspec.Struct, frozen=True, kw_only=True):
    """An attempt that is due and waits for admission."""

    project_id: str
    clip_id: str
    run: int
    attempt: int
    owner: str
    priority: Priority = "interactive"
    order: int = 0  # the log position of its request: smaller is older

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.project_id, self.clip_id, self.run, self.attempt)


class InFlight(msgspec.Struct, frozen=True):
    """An attempt running or admitted (in the queue, not started yet): it holds a worker slot."""

    owner: str
    project_id: str


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    project: int | None = None  # attempts in flight per project; None: unlimited
    owner: int | None = None  # per owner


class Turns(msgspec.Struct, frozen=True):
    """When each owner and project was last served (the number of the admission), for round-robin between passes."""

    owners: dict[str, int] = msgspec.field(default_factory=dict)
    projects: dict[str, int] = msgspec.field(default_factory=dict)
    count: int = 0  # admissions so far


class Selection(msgspec.Struct, frozen=True):
    admit: list[Waiting]
    since_batch: int  # interactive admissions in a row while batch work waited, to pass to the next `select`
    turns: Turns = Turns()  # to pass to the next `select`


def _under(load: int, limit: int | None) -> bool:
    return limit is None or load < limit


class _Queues:
    """The waiting attempts by priority, owner and project (oldest first), with the loads in flight."""

    def __init__(self, waiting: Iterable[Waiting], in_flight: Iterable[InFlight], limits: Limits, turns: Turns) -> None:
        self.limits = limits
        self.owner_turn, self.project_turn, self.count = dict(turns.owners), dict(turns.projects), turns.count
        self.by: dict[Priority, dict[str, dict[str, deque[Waiting]]]] = {p: {} for p in PRIORITIES}
        for item in sorted(waiting, key=lambda w: (w.order, w.key)):
            self.by[item.priority].setdefault(item.owner, {}).setdefault(item.project_id, deque()).append(item)
        flights = list(in_flight)
        self.owner_load = Counter(f.owner for f in flights)
        self.project_load = Counter(f.project_id for f in flights)

    def _projects(self, priority: Priority, owner: str) -> list[tuple[str, deque[Waiting]]]:
        return [
            (project, queue)
            for project, queue in self.by[priority][owner].items()
            if queue and _under(self.project_load[project], self.limits.project)
        ]

    def best(self, priority: Priority) -> tuple[str, str] | None:
        """The (owner, project) whose oldest attempt of `priority` goes next, None when none may be admitted."""
        chosen: tuple[tuple[int, int, int], str, list[tuple[str, deque[Waiting]]]] | None = None
        for owner in self.by[priority]:
            if not _under(self.owner_load[owner], self.limits.owner):
                continue
            projects = self._projects(priority, owner)
            if not projects:
                continue
            rank = (self.owner_load[owner], self.owner_turn.get(owner, -1), min(q[0].order for _, q in projects))
            if chosen is None or rank < chosen[0]:
                chosen = (rank, owner, projects)
        if chosen is None:
            return None
        _, owner, projects = chosen
        project, _ = min(
            projects, key=lambda pq: (self.project_load[pq[0]], self.project_turn.get(pq[0], -1), pq[1][0].order)
        )
        return owner, project

    def take(self, priority: Priority, owner: str, project: str) -> Waiting:
        item = self.by[priority][owner][project].popleft()
        self.owner_load[owner] += 1
        self.project_load[project] += 1
        self.count += 1
        self.owner_turn[owner] = self.project_turn[project] = self.count
        return item

    @property
    def turns(self) -> Turns:
        return Turns(self.owner_turn, self.project_turn, self.count)


def admission_order(
    waiting: Iterable[Waiting], in_flight: Iterable[InFlight], limits: Limits = Limits(), since_batch: int = 0,
    turns: Turns = Turns(),
) -> Iterator[tuple[Waiting, int, Turns]]:  # fmt: skip
    """The waiting attempts in the order they would be admitted if none in flight ended meanwhile, each with the
    `since_batch` count and the turns after it. Stops where the limits admit nothing more."""
    queues = _Queues(waiting, in_flight, limits, turns)
    while True:
        interactive, batch = queues.best("interactive"), queues.best("batch")
        if batch is not None and (interactive is None or since_batch >= BATCH_EVERY - 1):
            item, since_batch = queues.take("batch", *batch), 0
        elif interactive is not None:
            since_batch = since_batch + 1 if batch is not None else 0
            item = queues.take("interactive", *interactive)
        else:
            return
        yield item, since_batch, queues.turns


def select(
    waiting: Iterable[Waiting], in_flight: Iterable[InFlight], free: int, limits: Limits = Limits(),
    since_batch: int = 0, turns: Turns = Turns(),
) -> Selection:  # fmt: skip
    """The next `free` admissions under the rule (fewer when the limits or the waiting attempts run out)."""
    admit: list[Waiting] = []
    if free > 0:
        for item, since_batch, turns in admission_order(waiting, in_flight, limits, since_batch, turns):
            admit.append(item)
            if len(admit) == free:
                break
    return Selection(admit, since_batch, turns)


def queue_position(
    target: tuple[str, str, int, int], waiting: Iterable[Waiting], in_flight: Iterable[InFlight],
    since_batch: int = 0, turns: Turns = Turns(),
) -> int | None:  # fmt: skip
    """How many waiting attempts the rule admits before `target` (0: it is next); None when it does not wait.

    The limits are left out: they only hold an owner's or a project's work back until its own attempts end, which
    this count (made as if nothing in flight ended) cannot tell."""
    for ahead, (item, _, _) in enumerate(admission_order(waiting, in_flight, Limits(), since_batch, turns)):
        if item.key == target:
            return ahead
    return None
