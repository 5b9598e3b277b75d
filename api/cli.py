"""The `cliplog` command: dev, migrate, serve, worker, tail, replay, check, token, soak."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

import asyncpg

from runtime import settings as config
from runtime.settings import ConfigError, Settings

log = logging.getLogger("cliplog")


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


def cmd_token(args: argparse.Namespace) -> int:
    from api.auth import check_id, create_token

    async def run() -> str:
        check_id(args.user, "USER")
        conn = await _connect(_settings())
        try:
            return await create_token(conn, args.user)
        finally:
            await conn.close()

    token = asyncio.run(run())
    print(f"token for {args.user}:")
    print(token)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from runtime.bootstrap import web_app

    settings = _settings()
    app = web_app(settings)
    gc.collect()
    gc.freeze()  # the start-up objects (modules, the app) leave the garbage collector's full passes: shorter pauses
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        ws_ping_interval=None,
        ws_per_message_deflate=False,  # small messages: deflate would cost a zlib context (tens of KB) per socket
        timeout_graceful_shutdown=5,  # long polls and sockets are resumable: do not hold a deploy for them
    )
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


def cmd_replay(args: argparse.Namespace) -> int:
    """Fold the log through the service's own `evolve` and print each event with the clip's status after it."""
    from api.auth import check_id
    from eventlog.store import init_connection
    from projections.replay import describe, read_all, replay

    async def run() -> int:
        projects = [check_id(args.project, "--project")] if args.project else None
        if args.clip:
            check_id(args.clip, "--clip")
            if not projects:
                raise ConfigError("--clip needs --project")
        conn = await _connect(_settings())
        await init_connection(conn)
        mismatches = 0
        try:
            events = [e async for e in read_all(conn, projects, args.clip)]
            for step in replay(events):
                mismatches += step.mismatch is not None
                print(describe(step))
        finally:
            await conn.close()
        print(f"{len(events)} event(s) replayed; {mismatches} recorded status(es) differ from the replay")
        return 1 if mismatches else 0

    return asyncio.run(run())


def cmd_check(args: argparse.Namespace) -> int:
    """Rebuild the clip projection from the log in memory and compare it with the stored one."""
    from eventlog.store import init_connection
    from projections.clip_status import rebuild_differences

    async def run() -> int:
        conn = await _connect(_settings())
        await init_connection(conn)
        try:
            report = await rebuild_differences(conn)
        finally:
            await conn.close()
        for kind, keys in sorted(report.items()):
            for project_id, clip_id in sorted(keys):
                print(f"{kind}: {project_id}/{clip_id}")
        print("the projection equals a rebuild from the log" if not report else "the projection differs from the log")
        return 1 if report else 0

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

    replay = commands.add_parser("replay", help="replay the log: every event with the clip's status after it")
    replay.add_argument("--project", help="only this project")
    replay.add_argument("--clip", help="only this clip (with --project)")
    replay.set_defaults(run=cmd_replay)

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
    except (OSError, asyncpg.PostgresError) as error:
        print(f"cliplog: cannot reach a service: {type(error).__name__}: {error}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
