"""A synthetic log for the tests and benchmarks that need many events fast: clips whose histories `decide` and
`evolve` write (register, start, a retryable failure and its automatic retry, start, then complete, or for every
tenth clip (c0, c10, ...) a failure no retry can fix: 6 events a clip),
written as an export file (`eventlog.export`) that `usecases.imports.import_file` loads through the log's bulk
append in one transaction."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec

from domain.clip import ClipState, Complete, Context, Fail, Register, Start, decide, evolve
from domain.events import SCHEMA_VERSION, encode_data, type_of
from eventlog import export
from eventlog.store import StoredEvent, stream_name

EVENTS_PER_CLIP = 6
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _history(project: str, clip: str, at: datetime, fails: bool) -> list[tuple[object, str, datetime]]:
    state = ClipState(project_id=project, clip_id=clip)
    out = []
    end = (
        Fail(run=1, attempt=2, code="source_missing", message="gone", retryable=False)
        if fails
        else Complete(run=1, attempt=2, bytes=1000, duration_seconds=2.0, elapsed_seconds=0.2, output="o.mp4")
    )
    commands = [
        Register(source="games/match.mp4", start=1.0, end=3.0),
        Start(run=1, attempt=1, worker_id="w1"),
        Fail(run=1, attempt=1, code="ffmpeg_exit", message="exit 1", retryable=True),
        Start(run=1, attempt=2, worker_id="w2"),
        end,
    ]
    for step, command in enumerate(commands):
        now = at + timedelta(seconds=step * 20)
        for event in decide(state, command, Context(now=now, jitter=0.3)):
            state = evolve(state, event, now)
            out.append((event, state.status, now))
    return out


def write_log(path: Path, *, clips: int, project: str = "bulk", owner: str = "bulk-owner", group: int = 100) -> int:
    """Write `clips` clips' histories (EVENTS_PER_CLIP events each, `group` clips interleaved) to `path` as an export
    of project `project` owned by `owner`; the number of events."""
    count = clips * EVENTS_PER_CLIP
    header = export.Header(
        format=export.FORMAT, format_version=export.FORMAT_VERSION, epoch=uuid.uuid4(), exported_at=T0,
        schema_versions=dict(SCHEMA_VERSION), selection=export.Selection(project_id=project),
        range=export.Range(after=0, upto=count, after_cursor=None, upto_cursor=None), count=count,
        owners={project: owner},
    )  # fmt: skip
    encode = msgspec.json.Encoder().encode
    position = 0
    with path.open("wb") as out:
        out.write(encode(header) + b"\n")
        for first in range(0, clips, group):
            histories = [
                _history(project, f"c{i}", T0 + timedelta(seconds=i), i % 10 == 0) for i in range(first, min(clips, first + group))
            ]
            for step in range(EVENTS_PER_CLIP):
                for index, history in enumerate(histories):
                    event, status, at = history[step]
                    position += 1
                    clip = f"c{first + index}"
                    out.write(encode(StoredEvent(
                        position, stream_name(project, clip), project, clip, step + 1, type_of(event),
                        SCHEMA_VERSION[type_of(event)], encode_data(event), status, at,
                    )) + b"\n")  # fmt: skip
    return count
