"""The clip use cases: load a clip's state, decide, append its events and write its projection row, in one
transaction (`handle`); registering a clip claims its project in that transaction (`register`, and `register_once`,
which also stores the request's Idempotency-Key there; the project's owner is read with the clip's row, and an owned
project is not claimed again: owners never change), starting an attempt takes its lease in it (`start_attempt`),
which the worker then renews (`renew_lease`). `handle_each` runs one person's command on every clip of a project
(the bulk routes), each clip in its own transaction.

A version conflict means another writer got there first: the command is decided again on the fresh state (so a
late worker result turns into StaleAttempt, and a double click into a no-op).
"""

from __future__ import annotations

import functools
from typing import Awaitable, Callable

import asyncpg
import msgspec

from domain.clip import ClipState, Command, Context, Register, Start, decide, evolve
from domain.errors import Conflict, NotFound, StaleAttempt, VersionConflict
from eventlog import store
from projections import clip_status

ExtraWrite = Callable[[asyncpg.Connection, ClipState], Awaitable[None]]


class Handled(msgspec.Struct, frozen=True):
    state: ClipState
    position: int
    appended: list[store.StoredEvent]


# The clip's row and its project's owner in one round trip (a row either way: NULLs for what does not exist).
_READ_WITH_OWNER = (
    "SELECT c.state, c.position, (SELECT owner FROM projects WHERE project_id = $1) AS owner "
    "FROM (VALUES (1)) AS one(x) LEFT JOIN clips c ON c.project_id = $1 AND c.clip_id = $2"
)


_LEASE_COLUMNS = "(project_id, clip_id, run, attempt, worker_id, renewed_at)"
# The lease's upsert (`renew_lease`'s, which also takes over another attempt's row, dropping its progress).
_LEASE_CONFLICT = """
ON CONFLICT (project_id, clip_id) DO UPDATE
SET run = EXCLUDED.run, attempt = EXCLUDED.attempt, worker_id = EXCLUDED.worker_id, renewed_at = now(),
    -- another attempt's progress is not this one's (eventlog/progress.py)
    progress_at = CASE WHEN (leases.run, leases.attempt) = (EXCLUDED.run, EXCLUDED.attempt)
                       THEN leases.progress_at END
"""


@functools.cache
def _writes_sql(lease: bool) -> Callable[[bool], str]:
    """`handle`'s one statement: the events, then the clip's row at the last event's position (only while the row is
    at the version the command was decided on: `cliplog_require` fails the statement otherwise), then, starting an
    attempt, its lease."""
    numbers = iter(range(store.FIRST_WRITE_PARAMETER, 100))
    values = ", ".join("a.p" if column == "position" else f"${next(numbers)}" for column in clip_status.COLUMNS)
    rows = f"SELECT {values} FROM (SELECT max(position) AS p FROM appended) AS a"
    writes = f"saved AS ({clip_status.upsert_sql(rows, f'${next(numbers)}')} RETURNING run, attempt)"
    checks = ["saved"]
    if lease:
        worker = f"${next(numbers)}"
        writes += (f", leased AS (INSERT INTO leases {_LEASE_COLUMNS} SELECT $2, $3, s.run, s.attempt, {worker}, now() "
                   f"FROM saved AS s {_LEASE_CONFLICT} RETURNING 1)")  # fmt: skip
        checks.append("leased")
    return functools.cache(lambda many: store.append_with_sql(many, writes, checks))


def _write_args(state: ClipState, previous_version: int, lease_for: str | None) -> list:
    row = list(clip_status.values(state, 0))
    del row[clip_status.COLUMNS.index("position")]  # the statement takes the last event's
    return [*row, previous_version, *([lease_for] if lease_for is not None else [])]


async def handle(
    pool: asyncpg.Pool,
    project_id: str,
    clip_id: str,
    command: Command,
    context: Callable[[], Context],
    *,
    after_append: ExtraWrite | None = None,
    owned_by: str | None = None,
    known: tuple[ClipState, int] | None = None,
    lease_for: str | None = None,
    attempts: int = 5,
) -> Handled:
    """Run `command` against the clip; `after_append` runs in the same transaction, after the events. `owned_by`:
    the command is this user's, on a project nobody else has (404 otherwise, decided before deciding the command,
    from the owner read with the clip's row, on every try); a project nobody has claimed yet becomes theirs in the
    transaction. `known`: the clip's `(state, position)` as the caller just read or wrote it, decided on without
    reading it again; the append is at that state's version, so a state that moved on meanwhile conflicts, and the
    next try reads it. `lease_for`: the worker that takes the attempt's lease with the events (`start_attempt`).

    Without `after_append` or a project to claim, the events, the clip's row and the lease are written by one
    statement (`store.append_with`): one round trip, no BEGIN and COMMIT of their own."""
    for remaining in range(attempts - 1, -1, -1):
        async with pool.acquire() as conn:
            owner: str | None = None
            if known is not None:
                state, position = known
                known = None
            else:
                row = await conn.fetchrow(clip_status.READ_ROW if owned_by is None else _READ_WITH_OWNER, project_id, clip_id)
                value = row["state"] if row is not None else None
                state = (
                    clip_status.state_from_json(value)
                    if value is not None
                    else ClipState(project_id=project_id, clip_id=clip_id)
                )
                position = (row["position"] or 0) if row is not None else 0
                if owned_by is not None:
                    owner = row["owner"]
                    if owner is not None and owner != owned_by:
                        raise NotFound(f"project {project_id!r} not found")
            ctx = context()
            events = decide(state, command, ctx)
            if not events:
                return Handled(state, position, [])
            pairs = []
            new_state = state
            for event in events:
                new_state = evolve(new_state, event, ctx.now)
                pairs.append((event, new_state.status))
            claim = owned_by is not None and owner is None
            try:
                if after_append is None and not claim:
                    appended = await store.append_with(
                        conn, _writes_sql(lease_for is not None), _write_args(new_state, state.version, lease_for),
                        project_id=project_id, clip_id=clip_id, expected_version=state.version, events=pairs,
                        recorded_at=ctx.now,
                    )  # fmt: skip
                    position = appended[-1].position
                else:
                    async with conn.transaction():
                        appended = await store.append(
                            conn,
                            project_id=project_id,
                            clip_id=clip_id,
                            expected_version=state.version,
                            events=pairs,
                            recorded_at=ctx.now,
                        )
                        position = appended[-1].position
                        if not await clip_status.save(conn, new_state, state.version, position):
                            raise VersionConflict(store.stream_name(project_id, clip_id), state.version)
                        if lease_for is not None:
                            await renew_lease(conn, new_state, lease_for)
                        if claim:  # owners never change: an owned project stays theirs
                            await claim_project(conn, project_id, owned_by)  # type: ignore[arg-type]
                        if after_append is not None:
                            await after_append(conn, new_state)
            except VersionConflict:
                if remaining == 0:
                    raise
                continue
            await store.notify(conn, position)
            return Handled(new_state, position, appended)
    raise AssertionError("unreachable")


async def register(
    pool: asyncpg.Pool, project_id: str, clip_id: str, command: Register, context: Callable[[], Context], *, user: str
) -> Handled:
    """Register a clip; its project becomes `user`'s in the same transaction unless someone else has it (404).

    Two users posting a new project's first clip at once: with the same clip id, the loser's append waits for the
    winner's transaction, then conflicts, and its retry reads the winner's clip; deciding on that clip would answer
    the loser with it (200) or with 409, so the ownership check before each decision answers 404, as for any project
    of someone else. With different clip ids, the loser's claim of the project waits for the winner's, finds it
    taken, and answers 404."""
    return await handle(pool, project_id, clip_id, command, context, owned_by=user)


async def start_attempt(
    pool: asyncpg.Pool,
    project_id: str,
    clip_id: str,
    command: Start,
    context: Callable[[], Context],
    *,
    known: tuple[ClipState, int] | None = None,
) -> Handled:
    """Start an attempt and take its lease in the same transaction (the reaper judges a running attempt by it).
    `known`: the clip's state and position as the worker just read them (see `handle`)."""
    return await handle(
        pool,
        project_id,
        clip_id,
        command,
        context,
        lease_for=command.worker_id,
        known=known,
    )


async def claim_project(conn: asyncpg.Connection, project_id: str, user: str) -> None:
    """Within the registering transaction: the project becomes `user`'s unless someone else has it (404)."""
    await conn.execute(
        "INSERT INTO projects (project_id, owner) VALUES ($1, $2) ON CONFLICT (project_id) DO NOTHING", project_id, user
    )
    if await conn.fetchval("SELECT owner FROM projects WHERE project_id = $1", project_id) != user:
        raise NotFound(f"project {project_id!r} not found")


async def renew_lease(db: asyncpg.Connection | asyncpg.Pool, state: ClipState, worker_id: str) -> bool:
    """Renew the attempt's lease; False when it is no longer the clip's running attempt (the reaper or a person
    timed it out), so the worker can stop working on it."""
    result = await db.execute(
        f"""
        INSERT INTO leases {_LEASE_COLUMNS}
        SELECT $1, $2, $3, $4, $5, now()
        WHERE EXISTS (SELECT 1 FROM clips WHERE project_id = $1 AND clip_id = $2 AND run = $3 AND attempt = $4
                                             AND status = 'running')
        {_LEASE_CONFLICT}
        """,
        state.project_id,
        state.clip_id,
        state.run,
        state.attempt,
        worker_id,
    )
    return result.endswith(" 1")


class _KeyTaken(Exception):
    """Another request with the same Idempotency-Key registered its clip first (rolls this registration back)."""


async def register_once(
    pool: asyncpg.Pool,
    project_id: str,
    key: str,
    fingerprint: str,
    new_clip_id: str,
    command: Register,
    context: Callable[[], Context],
    *,
    user: str,
) -> Handled:
    """Register `new_clip_id` unless `key` already named a clip of the project: then that clip, with nothing
    appended. The key is stored in the registering transaction; `fingerprint` (of the request's body) must match
    the one stored with it (Conflict otherwise). Two requests racing with one key: the second one's registration is
    rolled back and it answers the first one's clip."""
    for _ in range(2):
        existing = await _clip_of_key(pool, project_id, key, fingerprint, user)
        if existing is not None:
            return existing

        async def remember(conn: asyncpg.Connection, _: ClipState) -> None:
            stored = await conn.fetchval(
                "INSERT INTO idempotency_keys (project_id, key, clip_id, fingerprint) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (project_id, key) DO NOTHING RETURNING true",
                project_id,
                key,
                new_clip_id,
                fingerprint,
            )
            if not stored:
                raise _KeyTaken()

        try:
            return await handle(pool, project_id, new_clip_id, command, context, owned_by=user, after_append=remember)
        except _KeyTaken:
            continue
    raise AssertionError("unreachable: the key's row was committed before _KeyTaken was raised")


async def _clip_of_key(pool: asyncpg.Pool, project_id: str, key: str, fingerprint: str, user: str) -> Handled | None:
    """The clip `key` already named in the project, when the project is `user`'s; in a project of someone else's,
    the 404 any request there gets (never their clip, nor whether the key was used)."""
    row = await pool.fetchrow(
        "SELECT p.owner, k.fingerprint, c.state, c.position FROM idempotency_keys k "
        "JOIN clips c ON c.project_id = k.project_id AND c.clip_id = k.clip_id "
        "JOIN projects p ON p.project_id = k.project_id "
        "WHERE k.project_id = $1 AND k.key = $2",
        project_id,
        key,
    )
    if row is None:
        return None
    if row["owner"] != user:
        raise NotFound(f"project {project_id!r} not found")
    if row["fingerprint"] != fingerprint:
        raise Conflict("this Idempotency-Key was already used for a request with another body", idempotency_key=key)
    return Handled(clip_status.state_from_json(row["state"]), row["position"], [])


class Skipped(msgspec.Struct, frozen=True):
    clip_id: str
    reason: str


class BulkOutcome(msgspec.Struct, frozen=True):
    changed: int
    skipped: list[Skipped]


async def handle_each(
    pool: asyncpg.Pool,
    project_id: str,
    command: Command,
    statuses: frozenset[str],
    context: Callable[[], Context],
) -> BulkOutcome:
    """Run a person's `command` on each clip of the project whose status is in `statuses`, each in its own
    transaction. Every other clip, and every clip the command refuses or leaves as it is, is skipped with why."""
    changed = 0
    skipped: list[Skipped] = []
    for state, _ in await clip_status.list_project(pool, project_id):
        if state.status not in statuses:
            skipped.append(Skipped(state.clip_id, f"the clip is {state.status}"))
            continue
        try:
            handled = await handle(pool, project_id, state.clip_id, command, context)
        except (Conflict, StaleAttempt) as error:  # its state moved on since it was listed
            skipped.append(Skipped(state.clip_id, error.detail))
            continue
        if handled.appended:
            changed += 1
        else:
            skipped.append(Skipped(state.clip_id, f"nothing to do: the clip is already {handled.state.status}"))
    return BulkOutcome(changed, skipped)
