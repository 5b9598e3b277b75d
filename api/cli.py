"""The `cliplog` command: dev, migrate, serve, worker, tail, replay, check, token, soak."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Awaitable, Callable, TypeVar

import asyncpg

from domain.errors import InvalidInput
from domain.events import UndecodableEvent
from runtime import settings as config
from runtime.settings import ConfigError, Settings

log = logging.getLogger("cliplog")
T = TypeVar("T")


def _settings() -> Settings:
    return config.load()


async def _connect(settings: Settings) -> asyncpg.Connection:
    from runtime.bootstrap import connect

    return await connect(settings)


async def _migrate(settings: Settings) -> list[str]:
    from eventlog.migrate import migrate

    conn = await _connect(settings)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    applied = asyncio.run(_migrate(_settings()))
    print(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ' (up to date)'}")
    return 0


def _on_database(work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """`work(conn)` on a connection of its own to the configured database."""

    async def run() -> T:
        conn = await _connect(_settings())
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def cmd_token(args: argparse.Namespace) -> int:
    from api.auth import check_id, create_token

    check_id(args.user, "USER")
    token = _on_database(lambda conn: create_token(conn, args.user))
    print(f"token for {args.user}:")
    print(token)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    """A user's tokens: an id and the creation time each (the tokens themselves are not stored)."""
    from api.auth import check_id, list_tokens

    check_id(args.user, "USER")
    tokens = _on_database(lambda conn: list_tokens(conn, args.user))
    for info in tokens:
        print(f"{info.token_id}  {info.created_at.isoformat()}")
    print(f"{len(tokens)} token(s) for {args.user}", file=sys.stderr)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    """Revoke a token, given as the token or as its id from `cliplog token list`."""
    from api.auth import revoke_token

    revoked = _on_database(lambda conn: revoke_token(conn, args.token))
    if revoked is None:
        print("cliplog token revoke: no such token (nothing revoked)", file=sys.stderr)
        return 1
    print(f"revoked token {revoked.token_id} of {revoked.user}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.server import config
    from runtime.bootstrap import web_app

    from runtime.heap import HeapFreezer

    settings = _settings()
    server = uvicorn.Server(config(web_app(settings), settings, host=args.host, port=args.port))

    async def serve() -> None:
        # long-lived objects (the start-up's, then each burst of sockets) leave CPython's full collections: short
        # pauses instead of ~100 ms after 1,000 clients connect (runtime/heap.py)
        freezer = asyncio.create_task(HeapFreezer().run(), name="heap-freezer")
        try:
            await server.serve()
        finally:
            freezer.cancel()

    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(serve())
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from runtime.bootstrap import worker

    asyncio.run(worker(_settings(), args.concurrency))
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """Follow the event feed, one JSON event per line (see api/feed_client.py and docs/feed.md)."""
    import json

    from api.feed_client import CursorReset, FeedClient, FeedError

    token = args.token or os.environ.get("CLIPLOG_TOKEN")
    if not token:
        print("cliplog tail: no token: pass --token or set CLIPLOG_TOKEN", file=sys.stderr)
        return 2
    after = None if args.after in ("", "start") else args.after
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per poll
    client = FeedClient(
        args.url, token, project_id=args.project, after=after, on_mode=lambda mode: log.info("feed: %s", mode)
    )

    async def follow() -> None:
        async for event in client.events():
            sys.stdout.write(json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n")
            sys.stdout.flush()

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return 0
    except CursorReset as error:
        print(f"cliplog tail: {error.detail} (start again with --after latest)", file=sys.stderr)
        return 5
    except FeedError as error:
        print(f"cliplog tail: {error.status}: {error.detail}", file=sys.stderr)
        return 4
    return 0


def _selection(args: argparse.Namespace) -> tuple[str | None, str | None]:
    from api.auth import check_id

    project = check_id(args.project, "--project") if args.project else None
    clip = check_id(args.clip, "--clip") if getattr(args, "clip", None) else None
    if clip and not project:
        raise ConfigError("--clip needs --project")
    return project, clip


async def _events_of(args: argparse.Namespace, project: str | None, clip: str | None) -> list:
    """The selected events, from `--file` (an export: no database) or from the log."""
    from eventlog.store import init_connection
    from projections.replay import read_all, selected

    if args.file:
        from eventlog import export

        _, events = export.read(Path(args.file))
        return list(selected(events, project, clip))
    conn = await _connect(_settings())
    try:
        await init_connection(conn)
        return [e async for e in read_all(conn, [project] if project else None, clip)]
    finally:
        await conn.close()


def cmd_replay(args: argparse.Namespace) -> int:
    """Fold the log (or an export) through the service's own `evolve` and print each event with the clip's state
    after it and the reason for it."""
    from projections.replay import describe, explain, replay, until

    async def run() -> int:
        project, clip = _selection(args)
        if args.to_version is not None and not clip:
            raise ConfigError("--to-version needs --project and --clip")
        events = list(until(await _events_of(args, project, clip), to_version=args.to_version,
                            at_position=args.at_position))  # fmt: skip
        mismatches = 0
        for step in replay(events):
            mismatches += step.mismatch is not None
            print(describe(step))
            print(explain(step))
        print(f"{len(events)} event(s) replayed; {mismatches} recorded status(es) differ from the replay")
        return 1 if mismatches else 0

    return _run_tool(run)


def _run_tool(run) -> int:  # noqa: ANN001 - a coroutine function
    """Run a tool's coroutine; a bad file or argument is one line on stderr and exit 2, never a traceback."""
    from domain.errors import CliplogError

    try:
        return asyncio.run(run())
    except CliplogError as error:
        print(f"cliplog: {error.detail}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as error:
        print(f"cliplog: {error.strerror}: {error.filename}", file=sys.stderr)
        return 2


def cmd_history(args: argparse.Namespace) -> int:
    """A clip's timeline: times, gaps, runs and attempts, errors in full, who detected a timeout, and why."""
    import msgspec

    from projections.replay import replay, timeline, when

    async def run() -> int:
        args.clip = args.clip_id
        project, clip = _selection(args)
        entries = timeline(replay(await _events_of(args, project, clip)))
        if not entries:
            print(f"cliplog history: no events of clip {clip!r} in project {project!r}", file=sys.stderr)
            return 1
        if args.json:
            sys.stdout.buffer.write(
                msgspec.json.encode({"project_id": project, "clip_id": clip, "events": entries}) + b"\n"
            )
            return 0
        rows = [
            (
                when(e.recorded_at),
                "" if e.gap_seconds is None else f"+{e.gap_seconds:.3f} s",
                f"{e.run}.{e.attempt}",
                e.type.removeprefix("extraction."),
                e.detail,
                e.why.position_line,
                e.why.text + ("" if e.recorded_status == e.why.status else f" (!! recorded as {e.recorded_status})"),
            )
            for e in entries
        ]
        headers = ("time", "gap", "run.attempt", "event", "what happened", "then", "why")
        if sys.stdout.isatty():
            from rich.console import Console
            from rich.table import Table

            table = Table(title=f"{project}/{clip}: {len(entries)} event(s)", show_lines=True)
            for header in headers:  # times whole; the reason gets the most room
                table.add_column(header, no_wrap=header in ("time", "gap"), overflow="fold", ratio=3 if header == "why" else 1)
            for row in rows:
                table.add_row(*row)
            Console().print(table)
        else:
            print(f"{project}/{clip}: {len(entries)} event(s)")
            for at, gap, attempt, event, what, then, why in rows:
                print(f"{at}  {gap or '':>11}  {attempt:>5}  {event:<9}  {what}".replace("\n", "\n" + " " * 8))
                print(f"{'':>8}-> {then}: {why}")
        return 0

    return _run_tool(run)


def cmd_export(args: argparse.Namespace) -> int:
    """Write the selected events as JSON lines (eventlog/export.py) to --output (atomically) or stdout."""
    from eventlog import export
    from runtime.files import atomic_file
    from runtime.progress import Progress
    from usecases.services import utcnow

    async def run() -> int:
        if not args.all and not args.project:
            raise ConfigError("name what to export: --project P [--clip C], or --all")
        if args.all and args.project:
            raise ConfigError("--all exports every project: leave out --project")
        project, clip = _selection(args)
        if args.url:
            return await over_http(project, clip)
        conn = await _connect(_settings())
        try:
            with Progress("export") as progress:
                if args.output:
                    with atomic_file(Path(args.output)) as out:
                        header = await _export_to(conn, out.write, project, clip, args.after, progress)
                else:
                    header = await _export_to(conn, sys.stdout.buffer.write, project, clip, args.after, progress)
                    sys.stdout.buffer.flush()
        finally:
            await conn.close()
        where = args.output or "stdout"
        print(f"exported {header.count} event(s), positions {header.range.after}..{header.range.upto}, to {where}; "
              f"continue with --after {header.range.upto_cursor}", file=sys.stderr)  # fmt: skip
        return 0

    async def over_http(project: str | None, clip: str | None) -> int:
        """--url: through a running cliplog's NDJSON stream (api/feed_client.py), no database; the events are
        spooled to a temporary file, since the header (first) counts them."""
        import contextlib
        import shutil
        import tempfile

        import msgspec

        from api.feed_client import FeedError, FeedUnavailable, export_events

        token = args.token or os.environ.get("CLIPLOG_TOKEN")
        if not token:
            raise ConfigError("--url needs a token: set CLIPLOG_TOKEN (or pass --token) to an API token of the user "
                              "whose projects to export")
        with tempfile.TemporaryFile() as spool, Progress("export") as progress:
            try:
                header = await export_events(
                    args.url, token, export.Selection(project_id=project, clip_id=clip), spool.write,
                    after=args.after, now=utcnow(), on_progress=progress.advance,
                )  # fmt: skip
            except (FeedError, FeedUnavailable) as error:
                print(f"cliplog export: {args.url}: {error}", file=sys.stderr)
                return 1
            spool.seek(0)
            with atomic_file(Path(args.output)) if args.output else contextlib.nullcontext(sys.stdout.buffer) as out:
                out.write(msgspec.json.encode(header) + b"\n")
                shutil.copyfileobj(spool, out)
                out.flush()
        print(f"exported {header.count} event(s), positions {header.range.after}..{header.range.upto}, from "
              f"{args.url} to {args.output or 'stdout'}; continue with --after {header.range.upto_cursor}",
              file=sys.stderr)  # fmt: skip
        return 0

    async def _export_to(conn, write, project, clip, after, progress):  # noqa: ANN001, ANN202
        async def sink(chunk: bytes) -> None:
            write(chunk)

        return await export.write(
            conn, sink, export.Selection(project_id=project, clip_id=clip), after=after, now=utcnow(),
            on_count=progress.total, on_progress=progress.advance,
        )  # fmt: skip

    return _run_tool(run)


def cmd_import(args: argparse.Namespace) -> int:
    """Load an export into the log in one transaction (usecases/imports.py), or refuse and write nothing."""
    from api.auth import check_id
    from eventlog.store import init_connection
    from runtime.progress import Progress
    from usecases.imports import import_file

    async def run() -> int:
        as_project = check_id(args.as_project, "--as-project") if args.as_project else None
        owner = check_id(args.owner, "--owner") if args.owner else None
        conn = await _connect(_settings())
        try:
            await init_connection(conn)
            with Progress("import") as progress:
                done = await import_file(conn, Path(args.file), as_project=as_project, owner=owner,
                                         on_count=progress.total, on_progress=progress.advance)  # fmt: skip
        finally:
            await conn.close()
        owners = ", ".join(f"{p} (owner {o})" for p, o in sorted(done.projects.items()))
        print(f"imported {done.count} event(s) of {done.streams} clip(s) into {owners or 'nothing'}")
        return 0

    return _run_tool(run)


def cmd_rebuild(args: argparse.Namespace) -> int:
    """Recompute the projections from the log and swap them in (projections/rebuild.py); --check: only compare."""
    import time

    from eventlog.pages import backfill_feed
    from eventlog.store import init_connection
    from projections.rebuild import drift, rebuild
    from runtime.progress import Progress

    async def run() -> int:
        settings = _settings()
        conn = await _connect(settings)
        try:
            await init_connection(conn)
            with Progress("check" if args.check else "rebuild") as progress:
                if args.check:
                    found = await drift(conn, on_count=progress.total, on_progress=progress.advance)
                else:
                    done = await rebuild(conn, connect=lambda: _connect(settings), on_count=progress.total,
                                         on_progress=progress.advance, clock=time.monotonic)  # fmt: skip
            if not args.check:
                print(f"rebuilt clips: {done.clips} clip(s) from {done.events} event(s); the swap took "
                      f"{(done.swap_ended - done.swap_started) * 1000:.0f} ms ({done.tail_under_lock} event(s) "
                      "folded under its lock)", flush=True)  # fmt: skip
                return await backfill(conn)
        finally:
            await conn.close()
        for d in found:
            print(f"{d.kind}: {d.project_id}/{d.clip_id}")
            for field, (stored, rebuilt) in d.fields.items():
                print(f"    {field}: stored {stored!r}, rebuilt {rebuilt!r}")
        print("no drift: the projection equals a rebuild from the log" if not found
              else f"drift in {len(found)} clip(s): `cliplog rebuild` replaces the projection")  # fmt: skip
        return 1 if found else 0

    async def backfill(conn) -> int:  # noqa: ANN001
        """After the swap: the feed's fingerprints of events written before migration 019 (eventlog.pages). Its
        failure loses nothing (those rows are read as before) and leaves the rebuild in place: a warning, exit 0."""
        try:
            filled = await backfill_feed(conn)
        except (asyncpg.PostgresError, OSError) as error:
            print(f"cliplog rebuild: the projection is rebuilt, but storing the feed fingerprints of older events "
                  f"stopped ({type(error).__name__}: {error}); `cliplog rebuild` again finishes it",
                  file=sys.stderr)  # fmt: skip
            return 0
        if filled:
            print(f"stored the feed fingerprint of {filled} event(s) written without it")
        return 0

    return _run_tool(run)


def cmd_check(args: argparse.Namespace) -> int:
    """Rebuild the clip and metrics projections from the log in memory and compare them with the stored ones."""
    from eventlog.store import init_connection
    from projections import metrics
    from projections.rebuild import rebuild_differences

    async def run() -> int:
        conn = await _connect(_settings())
        await init_connection(conn)
        try:
            report = await rebuild_differences(conn)
            counters = await metrics.rebuild_differences(conn)
        finally:
            await conn.close()
        for kind, keys in sorted(report.items()):
            for project_id, clip_id in sorted(keys):
                print(f"{kind}: {project_id}/{clip_id}")
        print("the projection equals a rebuild from the log" if not report else "the projection differs from the log")
        for metric, label, stored, rebuilt in counters:
            print(f"metrics {metric}{{{label}}}: stored {stored:g}, rebuilt from the log {rebuilt:g}")
        print("the metrics projection equals a rebuild from the log up to its checkpoint" if not counters
              else "the metrics projection differs from the log")  # fmt: skip
        return 1 if report or counters else 0

    return asyncio.run(run())


def cmd_soak(args: argparse.Namespace) -> int:
    """The mixed-fault soak of the whole topology (soak/): exit 0 only when every check holds."""
    from soak.runner import Options, run

    if args.duration <= 0:
        raise ConfigError("--duration must be greater than 0")
    data_dir = Path(args.data_dir).absolute() if args.data_dir else None
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    return run(Options(duration=args.duration, seed=args.seed, clips=args.clips, data_dir=data_dir, keep=args.keep))


# cliplog dev -----------------------------------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace) -> int:
    """Embedded PostgreSQL and Redis unless CLIPLOG_DATABASE_URL / CLIPLOG_REDIS_URL are set, the API and
    `--workers` workers, each started again when it exits, all stopped on SIGINT/SIGTERM (runtime/processes.py)."""
    from runtime.processes import Cluster, port_free

    data_dir = Path(args.data_dir or os.environ.get("CLIPLOG_DATA_DIR") or ".cliplog").absolute()
    env = dict(os.environ, CLIPLOG_DATA_DIR=str(data_dir))
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if not port_free(args.host, args.port):
        print(f"cliplog dev: port {args.port} on {args.host} is in use; choose another with --port", file=sys.stderr)
        return 1
    cluster: Cluster | None = None
    try:
        cluster = Cluster(
            data_dir, base_env=env, database_url=env.get("CLIPLOG_DATABASE_URL") or None,
            redis_url=env.get("CLIPLOG_REDIS_URL") or None, inherit_output=True, own_sessions=False,
        )  # fmt: skip
        if cluster.postgres is not None:
            print(f"embedded PostgreSQL: {cluster.postgres.directory}", flush=True)
        if cluster.redis is not None:
            print(f"embedded Redis: {cluster.redis.url}", flush=True)
        settings = config.load(cluster.env)
        settings.media_root.mkdir(parents=True, exist_ok=True)
        settings.output_root.mkdir(parents=True, exist_ok=True)
        token = asyncio.run(_prepare_dev(settings, demo=args.demo))
        if args.demo:  # demo only: an FFmpeg wrapper that hangs once, and a short attempt timeout (see api/demo.py)
            from api.demo import demo_environment

            cluster.env.update(demo_environment(settings, cluster.env))
            timeout = cluster.env["CLIPLOG_ATTEMPT_TIMEOUT"]
            print(f"demo: one clip hangs once; attempts time out after {timeout} s", flush=True)
        api = cluster.serve(host=args.host, port=args.port, wait=False)
        for index in range(args.workers):
            cluster.worker(f"worker-{index + 1}")
        cluster.wait_healthy(api)
        print(f"media folder: {settings.media_root}", flush=True)
        print(f"cliplog is running: open {api.url}/?token={token}", flush=True)
        print(f"API token (user 'dev'): {token}", flush=True)
        cluster.supervise(until=lambda: stopping)
        print("stopping…", flush=True)
        return 0
    except (ConfigError, RuntimeError) as error:
        print(f"cliplog dev: {error}", file=sys.stderr)
        return 1
    finally:
        if cluster is not None:
            cluster.close(grace=config.load(cluster.env).shutdown_grace + 5)


async def _prepare_dev(settings: Settings, demo: bool) -> str:
    from api.auth import create_token
    from eventlog.migrate import migrate

    conn = await _connect(settings)
    try:
        await migrate(conn)
        token = await create_token(conn, "dev", settings.dev_token)
    finally:
        await conn.close()
    if demo:
        from api.demo import add_demo
        from runtime.bootstrap import open_services

        services = await open_services(settings, pool_size=2)
        try:
            await add_demo(services, user="dev")
        finally:
            await services.close()
    return token


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="cliplog", description="Event-sourced clip extraction: no clip is ever stuck.")
    commands = root.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="everything on one machine, with embedded PostgreSQL and Redis")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--data-dir", default=None, help="default: $CLIPLOG_DATA_DIR or .cliplog")
    dev.add_argument("--workers", type=int, default=1)
    dev.add_argument("--demo", action="store_true", help="add a generated source video and sample clips")
    dev.set_defaults(run=cmd_dev)

    commands.add_parser("migrate", help="apply migrations/ (idempotent)").set_defaults(run=cmd_migrate)

    serve = commands.add_parser("serve", help="the HTTP/WebSocket API and the UI")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=cmd_serve)

    worker = commands.add_parser("worker", help="an arq worker: extraction, the reactor, the reaper")
    worker.add_argument("--concurrency", type=int, default=2)
    worker.set_defaults(run=cmd_worker)

    tail = commands.add_parser("tail", help="follow the event feed: one JSON event per line")
    tail.add_argument("--url", default="http://127.0.0.1:8000", help="the API (default http://127.0.0.1:8000)")
    tail.add_argument("--token", default=None, help="API token (default: $CLIPLOG_TOKEN)")
    tail.add_argument("--project", default=None, help="only this project (default: all of yours)")
    tail.add_argument("--after", default="latest", help="a cursor, 'latest' (default) or 'start' (the whole log)")
    tail.set_defaults(run=cmd_tail)

    replay = commands.add_parser("replay", help="replay the log: every event with the clip's state after it and why")
    replay.add_argument("--project", help="only this project")
    replay.add_argument("--clip", help="only this clip (with --project)")
    replay.add_argument("--to-version", type=int, default=None, help="stop after this version of the clip (with --clip)")
    replay.add_argument("--at-position", type=int, default=None, help="stop after this position of the log")
    replay.add_argument("--file", default=None, help="replay an export file (cliplog export), with no database")
    replay.set_defaults(run=cmd_replay)

    history = commands.add_parser("history", help="a clip's timeline: times, gaps, attempts, errors, and why")
    history.add_argument("clip_id", metavar="CLIP")
    history.add_argument("--project", required=True)
    history.add_argument("--json", action="store_true", help="JSON for machines")
    history.add_argument("--file", default=None, help="read an export file (cliplog export), with no database")
    history.set_defaults(run=cmd_history)

    export = commands.add_parser("export", help="write events as JSON lines: a header, then one event per line")
    export.add_argument("--project", help="this project's events")
    export.add_argument("--clip", help="only this clip (with --project)")
    export.add_argument("--all", action="store_true", help="the whole log")
    export.add_argument("--after", default=None, help="only events after this cursor (an export's upto_cursor)")
    export.add_argument("--output", default=None, help="write this file (atomically; default: stdout)")
    export.add_argument("--url", default=None, help="export from this running cliplog over HTTP (no database)")
    export.add_argument("--token", default=None, help="with --url: an API token (default: $CLIPLOG_TOKEN; --all: that user's projects)")
    export.set_defaults(run=cmd_export)

    load = commands.add_parser("import", help="load an export into this log (all in one transaction, or nothing)")
    load.add_argument("file", metavar="FILE")
    load.add_argument("--as-project", default=None, help="put the export's project under this new project id")
    load.add_argument("--owner", default=None, help="the user who owns the imported project (default: the export's)")
    load.set_defaults(run=cmd_import)

    rebuild = commands.add_parser("rebuild", help="recompute the projections from the log and swap them in, live")
    rebuild.add_argument("--check", action="store_true", help="only print the drift (exit 1 if any)")
    rebuild.set_defaults(run=cmd_rebuild)

    commands.add_parser("check", help="compare the clip projection with a rebuild from the log").set_defaults(
        run=cmd_check
    )

    soak = commands.add_parser("soak", help="a mixed-fault soak of the whole topology, with its report")
    soak.add_argument("--duration", type=float, default=60.0, help="seconds of faults (default 60)")
    soak.add_argument("--seed", type=int, default=None, help="repeat a run's random choices (default: a new seed)")
    soak.add_argument("--clips", type=int, default=None, help="clips to register (default: max(240, 1.5 a second))")
    soak.add_argument("--data-dir", default=None, help="where its servers, media and logs go (default: a temp dir)")
    soak.add_argument("--keep", action="store_true", help="keep the data dir after a passing run")
    soak.set_defaults(run=cmd_soak)

    token = commands.add_parser("token", help="API tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="print a new API token for USER")
    create.add_argument("user")
    create.set_defaults(run=cmd_token)
    listing = token_commands.add_parser("list", help="USER's tokens: an id and the creation time (never the token)")
    listing.add_argument("user")
    listing.set_defaults(run=cmd_token_list)
    revoke = token_commands.add_parser(
        "revoke", help="revoke TOKEN (the token, or its id from `token list`): at once, open sockets included"
    )
    revoke.add_argument("token")
    revoke.set_defaults(run=cmd_token_revoke)
    return root


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("CLIPLOG_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")  # pgserver's platformdirs, harmless here
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"cliplog: {error}", file=sys.stderr)
        return 2
    except InvalidInput as error:
        print(f"cliplog: {error.detail}", file=sys.stderr)
        return 2
    except UndecodableEvent as error:  # replay, check: stopped at an event this version cannot read
        print(f"cliplog: stopped: {error}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as error:
        print(f"cliplog: cannot reach a service: {type(error).__name__}: {error}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
