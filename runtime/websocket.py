"""Writing a prebuilt WebSocket frame straight to one of uvicorn's sans-I/O WebSocket connections.

The feed sends every event to up to thousands of sockets. Its message is rendered once (`eventlog.broker.render`),
with the whole frame a server sends for it (`text_frame`: RFC 6455, FIN, text, unmasked; no extension, since the API
turns per-message deflate off). `write_now` writes those bytes to a connection of uvicorn's `websockets-sansio`
protocol (`api.server.AbortingWebSocketProtocol`) when, and only when, uvicorn's own `send` would write them at once:
the handshake done, no close sent or received, not disconnected, and the transport below its high-water mark
(uvicorn clears `writable` above it). Otherwise it writes nothing and says so, and the caller goes through the ASGI
`send` (which waits, raises or closes as uvicorn decides). What uvicorn's `send` would have written is exactly these
bytes: its sans-I/O protocol keeps no state about unfragmented data frames it sends.
"""

from __future__ import annotations

from typing import Any

from websockets.protocol import State


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked WebSocket text frame carrying `payload`."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + payload


def write_now(protocol: Any, frame: bytes) -> bool:
    """Write `frame` to the uvicorn sans-I/O WebSocket `protocol` if its `send` would write at once; whether it did.

    Anything else (no protocol: another server or WebSocket implementation; a uvicorn whose protocol lacks what this
    reads) writes nothing, and the caller sends as usual."""
    if protocol is None:
        return False
    try:
        ready = (
            protocol.handshake_complete
            and not protocol.close_sent
            and protocol.initial_response is None
            and not protocol.disconnected
            and protocol.writable.is_set()
            and protocol.conn.state is State.OPEN
            and not protocol.transport.is_closing()
        )
    except AttributeError:
        return False
    if ready:
        protocol.transport.write(frame)
        return True
    return False
