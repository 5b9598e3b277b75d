"""Replay: fold the log through the same `evolve` the service uses and show each clip's states and why
(`domain.story`), checking the recorded `clip_status` of every event and the stored projection against the replay.
Because decisions take their clock and jitter as arguments and record the results in the events, a replay gives
the states the service had. The events come from the database or from an export file (`eventlog.export`)."""

from __future__ import annotations

from datetime import datetime
from typing import AsyncIterator, Iterable, Iterator, Sequence

import asyncpg
import msgspec

from domain.clip import ClipState
from domain.events import UndecodableEvent
from domain.story import Explanation, step
from eventlog import store
from eventlog.store import StoredEvent


class Step(msgspec.Struct, frozen=True):
    event: StoredEvent
    state: ClipState
    mismatch: str | None  # what the recorded clip_status said, when it differs from the replay
    why: Explanation


def replay(events: Iterable[StoredEvent]) -> Iterable[Step]:
    """Each event with the clip's state right after it and why (events in position order, any mix of clips). An
    event this code cannot decode stops the fold there (UndecodableEvent naming it): skipping it would give wrong
    states."""
    states: dict[str, ClipState] = {}
    for event in events:
        before = states.get(event.stream) or ClipState(project_id=event.project_id, clip_id=event.clip_id)
        try:
            decoded = event.decoded()
        except UndecodableEvent as error:
            raise UndecodableEvent(
                f"event {event.position} ({event.stream} v{event.version}) cannot be decoded: {error}"
            ) from error
        state, why = step(before, decoded, event.recorded_at)
        states[event.stream] = state
        mismatch = None if event.clip_status == state.status else event.clip_status
        yield Step(event, state, mismatch, why)


def until(
    events: Iterable[StoredEvent], *, to_version: int | None = None, at_position: int | None = None
) -> Iterator[StoredEvent]:
    """The events up to and including version `to_version` of their stream / position `at_position`."""
    for event in events:
        if at_position is not None and event.position > at_position:
            return
        if to_version is not None and event.version > to_version:
            continue
        yield event


def selected(
    events: Iterable[StoredEvent], project_id: str | None = None, clip_id: str | None = None
) -> Iterator[StoredEvent]:
    """The events of one project (and clip), for a replay of an export file."""
    for event in events:
        if (project_id is None or event.project_id == project_id) and (clip_id is None or event.clip_id == clip_id):
            yield event


async def read_all(
    conn: asyncpg.Connection | asyncpg.Pool,
    project_ids: Sequence[str] | None = None,
    clip_id: str | None = None,
) -> AsyncIterator[StoredEvent]:
    if clip_id is not None and project_ids:
        for event in await store.read_stream(conn, project_ids[0], clip_id):
            yield event
        return
    position = 0
    while batch := await store.read_after(conn, position, 1000, project_ids):
        for event in batch:
            yield event
        position = batch[-1].position


def detail(event: StoredEvent) -> str:
    """What happened, in full (an error's whole message, who detected a timeout)."""
    data = event.data
    return {
        "extraction.requested": lambda: f"{data.get('reason')} {data.get('source')} {data.get('start')}–{data.get('end')} s"
        + (f" not before {data.get('not_before')}" if data.get("reason") == "auto_retry" else ""),
        "extraction.started": lambda: f"on {data.get('worker_id')}, deadline {data.get('deadline_at')}",
        "extraction.completed": lambda: f"{data.get('bytes')} bytes, {data.get('duration_seconds')} s of video "
        f"in {data.get('elapsed_seconds')} s",
        "extraction.failed": lambda: f"{data.get('code')}: {data.get('message')}"
        + (" (retryable)" if data.get("retryable") else " (not retryable)"),
        "extraction.timed_out": lambda: (f"{data['reason']}, " if data.get("reason") else "")
        + f"detected by {data.get('detected_by')} after {data.get('elapsed_seconds')} s",
        "extraction.cancelled": lambda: f"by {data.get('by')} after {data.get('elapsed_seconds')} s",
    }.get(event.type, lambda: "")()


def when(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds")


def describe(step: Step) -> str:
    """One line for a person: when, which clip, what happened, and the status after it."""
    e, data = step.event, step.event.data
    flag = f"  !! recorded as {step.mismatch}" if step.mismatch else ""
    return (
        f"{e.position:>8}  {when(e.recorded_at)}  {e.project_id}/{e.clip_id}  v{e.version}  "
        f"{e.type.removeprefix('extraction.'):<9} {data.get('run')}.{data.get('attempt')}  {detail(e)}  "
        f"-> {step.state.status}{flag}"
    )


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One event of a clip's timeline (`cliplog history`)."""

    position: int
    version: int
    recorded_at: datetime
    gap_seconds: float | None  # since the clip's previous event
    type: str
    run: int
    attempt: int
    detail: str
    data: dict
    recorded_status: str
    why: Explanation


def timeline(steps: Iterable[Step]) -> list[Entry]:
    entries: list[Entry] = []
    previous: datetime | None = None
    for s in steps:
        e = s.event
        entries.append(
            Entry(
                position=e.position,
                version=e.version,
                recorded_at=e.recorded_at,
                gap_seconds=(e.recorded_at - previous).total_seconds() if previous is not None else None,
                type=e.type,
                run=e.data.get("run", 0),
                attempt=e.data.get("attempt", 0),
                detail=detail(e),
                data=e.data,
                recorded_status=e.clip_status,
                why=s.why,
            )
        )
        previous = e.recorded_at
    return entries


def explain(step: Step) -> str:
    """The line under `describe`'s: where the clip stands and why."""
    return f"{'':>8}  -> {step.why.position_line}: {step.why.text}"
