"""`cliplog serve` inside the test process: the real app (`runtime.bootstrap.web_app`) under uvicorn, in a thread with its
own event loop, on a free port. Tests talk to it over real HTTP and WebSockets, and can reach into `app.state`
(the feed broker, its settings) to tune or inspect it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any, Awaitable, Callable, Mapping, TypeVar

import uvicorn

from api.server import config as server_config
from runtime.bootstrap import web_app
from runtime import settings as config

T = TypeVar("T")


class InProcessServer:
    def __init__(self, env: Mapping[str, str], *, send_buffer: int | None = None, port: int = 0) -> None:
        """`env`: CLIPLOG_* variables for `runtime.settings.load`. `send_buffer`: SO_SNDBUF of the listening socket,
        inherited by every accepted connection (a small one makes a client that stops reading block the server
        quickly, as a slow consumer over a real network would). `port`: 0 for a free one, or the port of a server
        stopped before (a restart, as clients see it)."""
        self.settings = config.load(env)
        self.app = web_app(self.settings)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if send_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(server_config(self.app, self.settings, lifespan="on"))  # as `cliplog serve`
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, name=f"cliplog-api-{self.port}", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=self.server.config.get_loop_factory()) as runner:  # as `cliplog serve`
                runner.run(self._serve())
        except BaseException as error:  # reported by start()
            self.error = error

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve(sockets=[self.sock])

    def start(self, timeout: float = 20) -> InProcessServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self.error is not None or not self.thread.is_alive():
                raise RuntimeError(f"the in-process API did not start: {self.error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("the in-process API did not start in time")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()

    @property
    def state(self) -> Any:
        return self.app.state

    def call(self, function: Callable[[], Awaitable[T]], timeout: float = 10) -> T:
        """Run `function()` in the server's event loop and return its result (from another thread)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(function(), self.loop).result(timeout)

    async def acall(self, function: Callable[[], Awaitable[T]], timeout: float = 10) -> T:
        """`call` for async tests: awaits without blocking the test's event loop."""
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(function(), self.loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
