"""How the app runs under uvicorn (`cliplog serve`, and the tests' in-process server): its options, and the
WebSocket protocol that drops a client which stops reading.

uvicorn sends protocol pings every `CLIPLOG_WS_PING_INTERVAL` seconds and fails a connection whose pong has not
come back within `CLIPLOG_WS_SEND_TIMEOUT` (a frozen tab, a stopped process, a peer gone without a FIN: a pong
queues behind every byte the peer has not read, so a client that stops reading misses it too). uvicorn then closes
the transport, and asyncio's `close()` waits until the peer has taken the bytes still buffered for it, which a
stopped client never does: the socket and its buffers would stay for ever. `AbortingWebSocketProtocol` aborts
such a transport `CLIPLOG_WS_SEND_TIMEOUT` seconds after the close. (Only WebSockets: a paused video download on
the HTTP side is left to the client.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from runtime.settings import Settings


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


def websocket_protocol(settings: Settings) -> type[AbortingWebSocketProtocol]:
    return type("FeedWebSocketProtocol", (AbortingWebSocketProtocol,), {"abort_after": settings.ws_send_timeout})


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """`uvicorn.Config` options (beside the app, host and port) for the API."""
    return {
        "log_level": "warning",
        "ws": websocket_protocol(settings),
        "ws_ping_interval": settings.ws_ping_interval,
        "ws_ping_timeout": settings.ws_send_timeout,
        "ws_per_message_deflate": False,  # small messages: deflate would cost a zlib context (tens of KB) per socket
        "timeout_graceful_shutdown": 5,  # long polls and sockets are resumable: do not hold a deploy for them
    }


def config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    return uvicorn.Config(app, **{**uvicorn_options(settings), **options})
