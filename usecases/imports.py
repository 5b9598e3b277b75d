"""Import an export (`eventlog.export`) into a log: all of it in one transaction, or nothing.

The events go through the log's bulk append (`eventlog.store.append_rows`: new positions of this log, allocated like
every append's), the clip projection rows are written from a fold through the service's own `evolve`, and each project is
claimed for its owner, all in that transaction, so `cliplog check` passes afterwards and the feed, the reactor and
the reaper see the imported clips like any other (a clip exported while pending or running is picked up or timed out
here too).

Refused, writing nothing: events of a stream this log already holds (events are never mixed into an existing
stream: `as_project` puts the export under a new project id instead); a project that belongs to someone else; a
stream that does not start at version 1 in the file (an export taken `--after` a cursor continues streams and
cannot be imported on its own); a file that is not an export, or holds events this code cannot read.

Owner: `owner` if given, else the owner the export names for the project (its `owners` header).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import asyncpg
import msgspec

from domain.clip import ClipState, evolve
from domain.events import decode_json
from domain.errors import Conflict, InvalidInput, VersionConflict
from eventlog import export, store
from projections import clip_status

class Imported(msgspec.Struct, frozen=True):
    count: int
    streams: int
    projects: dict[str, str]  # project id -> owner
    first_position: int


class _Plan(msgspec.Struct):
    header: export.Header
    count: int
    projects: set[str]
    states: dict[str, tuple[ClipState, int]]  # stream -> (state after its last event, that event's ord)


def _renamed(project: str, as_project: str | None) -> str:
    return as_project if as_project is not None else project


def _plan(path: Path, as_project: str | None, on_progress: Callable[[int], None]) -> _Plan:
    """Read the file once: check it, and fold every stream (the projection rows to write)."""
    header, events = export.read(path, raw_data=True)
    versions: dict[str, int] = {}
    states: dict[str, tuple[ClipState, int]] = {}
    projects: set[str] = set()

    def checked():  # noqa: ANN202
        for event in events:
            expected = versions.get(event.stream, 0) + 1
            if event.version != expected:
                where = "starts at" if expected == 1 else f"skips from {expected - 1} to"
                raise InvalidInput(
                    f"stream {event.stream!r} {where} version {event.version} in {path}: only whole streams can be "
                    "imported (an export taken --after a cursor continues streams; export without --after)"
                )
            versions[event.stream] = event.version
            projects.add(event.project_id)
            yield event

    count = 0
    for ord_, event in enumerate(checked()):
        stream = store.stream_name(_renamed(event.project_id, as_project), event.clip_id)
        before = states.get(stream)
        state = before[0] if before else ClipState(project_id=_renamed(event.project_id, as_project),
                                                   clip_id=event.clip_id)  # fmt: skip
        try:
            decoded = decode_json(event.type, event.schema_version, event.data)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as error:
            raise InvalidInput(f"{path}: event {ord_ + 1} ({event.type} of {event.stream}) is not valid: {error}")
        states[stream] = (evolve(state, decoded, event.recorded_at), ord_)
        count = ord_ + 1
        if count % 10_000 == 0:
            on_progress(10_000)
    on_progress(count % 10_000)
    if as_project is not None and len(projects) > 1:
        raise InvalidInput(f"--as-project puts one project under a new id; {path} holds {len(projects)} projects")
    if count != header.count:
        raise InvalidInput(f"{path} is cut short: its header promises {header.count} events, it holds {count}")
    return _Plan(header, count, {_renamed(p, as_project) for p in projects} if count else set(), states)


def _owners(plan: _Plan, as_project: str | None, owner: str | None) -> dict[str, str]:
    owners: dict[str, str] = {}
    for project in plan.projects:
        source = next(iter(plan.header.owners.values()), None) if as_project is not None else None
        chosen = owner or (source if as_project is not None else plan.header.owners.get(project))
        if chosen is None:
            raise InvalidInput(f"the export names no owner for project {project!r}: pass --owner USER")
        owners[project] = chosen
    return owners


async def import_file(
    conn: asyncpg.Connection,
    path: Path,
    *,
    as_project: str | None = None,
    owner: str | None = None,
    on_count: Callable[[int], None] = lambda total: None,
    on_progress: Callable[[int], None] = lambda done: None,
) -> Imported:
    """Import the export at `path` into the log behind `conn` (see the module docstring)."""
    header, _ = export.read(path)
    on_count(2 * header.count)  # read and checked, then sent to the database
    plan = _plan(path, as_project, on_progress)
    owners = _owners(plan, as_project, owner)
    if as_project is not None and (
        await conn.fetchval("SELECT 1 FROM projects WHERE project_id = $1", as_project)
        or await conn.fetchval("SELECT 1 FROM events WHERE project_id = $1 LIMIT 1", as_project)
    ):
        raise Conflict(f"--as-project {as_project!r} is not a new project id: this log already has that project")
    existing = await conn.fetch(
        "SELECT stream FROM (SELECT DISTINCT stream FROM events WHERE stream = ANY($1::text[])) s ORDER BY stream",
        list(plan.states),
    )
    if existing:
        names = ", ".join(r["stream"] for r in existing[:5]) + (" …" if len(existing) > 5 else "")
        raise Conflict(
            f"this log already holds {len(existing)} of the export's streams ({names}); importing would mix events "
            "into them. Import under a new project id with --as-project P"
        )
    for project, current in await conn.fetch(
        "SELECT project_id, owner FROM projects WHERE project_id = ANY($1::text[])", list(owners)
    ):
        if current != owners[project]:
            raise Conflict(
                f"project {project!r} belongs to another user here; import it under a new id with --as-project P"
            )
    if not plan.count:
        return Imported(0, 0, owners, 0)

    try:
        async with conn.transaction():
            lines = _counted((line for _, line in export.event_lines(path)), on_progress)
            first = await store.append_rows(conn, plan.count, lines, project_id=as_project)
            await conn.executemany(
                "INSERT INTO projects (project_id, owner) VALUES ($1, $2) ON CONFLICT (project_id) DO NOTHING",
                list(owners.items()),
            )
            await clip_status.copy_rows(conn, "clips", ((state, first + ord_) for state, ord_ in plan.states.values()))
    except (VersionConflict, asyncpg.UniqueViolationError):
        raise Conflict("another writer added events to one of the export's streams during the import") from None
    await store.notify(conn, first + plan.count - 1)
    return Imported(plan.count, len(plan.states), owners, first)


def _counted(lines: Iterator[bytes], on_progress: Callable[[int], None]) -> Iterator[bytes]:
    sent = 0
    for sent, line in enumerate(lines, start=1):
        yield line
        if sent % 10_000 == 0:
            on_progress(10_000)
    on_progress(sent % 10_000)
