"""How the app runs under uvicorn (`cliplog serve`, and the tests' in-process server): its options, and the
WebSocket protocol that drops a client which stops reading.

uvicorn sends protocol pings every `CLIPLOG_WS_PING_INTERVAL` seconds and fails a connection whose pong has not
come back within `CLIPLOG_WS_SEND_TIMEOUT` (a frozen tab, a stopped process, a peer gone without a FIN: a pong
queues behind every byte the peer has not read, so a client that stops reading misses it too). uvicorn then closes
the transport, and asyncio's `close()` waits until the peer has taken the bytes still buffered for it, which a
stopped client never does: the socket and its buffers would stay for ever. `AbortingWebSocketProtocol` aborts
such a transport `CLIPLOG_WS_SEND_TIMEOUT` seconds after the close. (Only WebSockets: a paused video download on
the HTTP side is left to the client.)

The feed's hot path (1,000 subscribers get each event): a live event's message, rendered once for all of them,
carries its whole WebSocket frame (`eventlog.broker.PREBUILT_FRAME`); while the connection is open and its transport
below the high-water mark, `send` writes those bytes as they are instead of encoding the text and framing it again
for every subscriber (anything else, and any other state, goes through uvicorn's `send` unchanged). The protocol
also puts its own `send` in the scope (`SCOPE_SEND`), so that the feed's handler can send live events without the
framework's per-message wrappers (which only track HTTP response state).
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from eventlog.broker import PREBUILT_FRAME
from runtime.settings import Settings
from runtime.websocket import write_now

SCOPE_SEND = "cliplog.send"  # the scope key under which the protocol puts its own `send`
SCOPE_PROTOCOL = "cliplog.protocol"  # ... and itself, for `runtime.websocket.write_now`


class _AbortLater:
    """A transport whose `close()` is followed by an `abort()` after `after` seconds if bytes are still buffered."""

    def __init__(self, transport: asyncio.Transport, after: float) -> None:
        self._transport = transport
        self._after = after
        self.write = transport.write  # the hot path: an attribute, not a `__getattr__` call per message
        self.is_closing = transport.is_closing

    def close(self) -> None:
        self._transport.close()
        if self._transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(self._after, self._transport.abort)  # a no-op once it has closed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class AbortingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, except that a connection it closes while the peer has not read what was sent
    is aborted `abort_after` seconds later (see the module docstring)."""

    abort_after = 10.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_AbortLater(transport, self.abort_after))  # type: ignore[arg-type]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # the ASGI task it just created has not run yet
            scope[SCOPE_SEND] = self.send  # type: ignore[literal-required]
            scope[SCOPE_PROTOCOL] = self  # type: ignore[literal-required]

    async def send(self, message: Any) -> None:
        frame = message.get(PREBUILT_FRAME)
        if frame is not None and write_now(self, frame):  # what uvicorn's `send` would write, framed once
            return
        await super().send(message)


def websocket_protocol(settings: Settings) -> type[AbortingWebSocketProtocol]:
    return type("FeedWebSocketProtocol", (AbortingWebSocketProtocol,), {"abort_after": settings.ws_send_timeout})


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """`uvicorn.Config` options (beside the app, host and port) for the API."""
    return {
        "log_level": "warning",
        # asyncio's own loop, even where uvloop is installed: the feed's flow control (the 4408 of a slow reader)
        # and the transports' clean closing are built and tested on it (under uvloop test_feed.py's slow consumer
        # fails and closed sockets are reported unclosed)
        "loop": "asyncio",
        "ws": websocket_protocol(settings),
        "ws_ping_interval": settings.ws_ping_interval,
        "ws_ping_timeout": settings.ws_send_timeout,
        "ws_per_message_deflate": False,  # small messages: deflate would cost a zlib context (tens of KB) per socket
        "timeout_graceful_shutdown": 5,  # long polls and sockets are resumable: do not hold a deploy for them
    }


def config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    return uvicorn.Config(app, **{**uvicorn_options(settings), **options})
