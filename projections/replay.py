"""Replay: fold the log through the same `evolve` the service uses and show each clip's states, checking the
recorded `clip_status` of every event and the stored projection against the replay. Because decisions take their
clock and jitter as arguments and record the results in the events, a replay gives the states the service had."""

from __future__ import annotations

from datetime import datetime
from typing import AsyncIterator, Iterable, Sequence

import asyncpg
import msgspec

from domain.clip import ClipState, evolve
from eventlog import store
from eventlog.store import StoredEvent


class Step(msgspec.Struct, frozen=True):
    event: StoredEvent
    state: ClipState
    mismatch: str | None  # what the recorded clip_status said, when it differs from the replay


def replay(events: Iterable[StoredEvent]) -> Iterable[Step]:
    """Each event with the clip's state right after it (events in position order, any mix of clips)."""
    states: dict[str, ClipState] = {}
    for event in events:
        state = states.get(event.stream) or ClipState(project_id=event.project_id, clip_id=event.clip_id)
        state = evolve(state, event.decoded(), event.recorded_at)
        states[event.stream] = state
        mismatch = None if event.clip_status == state.status else event.clip_status
        yield Step(event, state, mismatch)


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


def describe(step: Step) -> str:
    """One line for a person: when, which clip, what happened, and the status after it."""
    e, data = step.event, step.event.data
    detail = {
        "extraction.requested": lambda: f"{data.get('reason')} {data.get('source')} {data.get('start')}–{data.get('end')} s"
        + (f" not before {data.get('not_before')}" if data.get("reason") == "auto_retry" else ""),
        "extraction.started": lambda: f"on {data.get('worker_id')}, deadline {data.get('deadline_at')}",
        "extraction.completed": lambda: f"{data.get('bytes')} bytes, {data.get('duration_seconds')} s of video "
        f"in {data.get('elapsed_seconds')} s",
        "extraction.failed": lambda: f"{data.get('code')}: {data.get('message')}"
        + (" (retryable)" if data.get("retryable") else " (not retryable)"),
        "extraction.timed_out": lambda: f"detected by {data.get('detected_by')} after {data.get('elapsed_seconds')} s",
        "extraction.cancelled": lambda: f"by {data.get('by')} after {data.get('elapsed_seconds')} s",
    }.get(e.type, lambda: "")()
    when = e.recorded_at.isoformat(timespec="milliseconds") if isinstance(e.recorded_at, datetime) else e.recorded_at
    flag = f"  !! recorded as {step.mismatch}" if step.mismatch else ""
    return (
        f"{e.position:>8}  {when}  {e.project_id}/{e.clip_id}  v{e.version}  "
        f"{e.type.removeprefix('extraction.'):<9} {data.get('run')}.{data.get('attempt')}  {detail}  -> {step.state.status}{flag}"
    )
