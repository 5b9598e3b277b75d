"""The soak's feed clients: per user one WebSocket client and one long-poll client, written on raw `websockets` and
`httpx` rather than `api.feed_client.FeedClient` because that client drops anything at or below the last position
it yielded: here every event the server sends is recorded as it arrives, so a duplicate or a gap the server
produces is seen. Each connection goes to one of the API instances at random; when a fault cuts it (`cut()`, or an
API instance dies under it) the client reconnects from the cursor of the last event it recorded.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from typing import Any, Callable
from urllib.parse import urlencode

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from soak.checks import LoggedEvent

PERMANENT = {4400, 4401, 4404, 4410}  # refusals that no reconnection can fix: a soak failure


def logged(event: dict[str, Any]) -> LoggedEvent:
    """The feed's JSON event as the checks compare it with the log."""
    data = event.get("data") or {}
    return LoggedEvent(
        position=event["position"], project_id=event["project_id"], clip_id=event["clip_id"],
        version=event["version"], type=event["type"], run=int(data.get("run", 0)), attempt=int(data.get("attempt", 0)),
        clip_status=event["clip_status"], recorded_at=0.0,
    )  # fmt: skip


class FeedRecorder:
    """One user's client of one kind (`ws` or `poll`)."""

    def __init__(self, user: str, token: str, kind: str, urls: Callable[[], list[str]], rng: random.Random) -> None:
        self.user = user
        self.token = token
        self.kind = kind
        self.urls = urls
        self.rng = rng
        self.received: list[LoggedEvent] = []
        self.arrived: list[float] = []  # when each event arrived (time.time())
        self.cursor: str | None = None  # None: the beginning of the log
        self.connections = 0
        self.cuts = 0
        self.drops: Counter[str] = Counter()  # why connections ended, other than a cut
        self.problems: list[str] = []
        self._connection: asyncio.Task | None = None

    @property
    def name(self) -> str:
        return f"{self.user}/{self.kind}"

    def _record(self, event: dict[str, Any]) -> None:
        self.received.append(logged(event))
        self.arrived.append(time.time())
        self.cursor = event["cursor"]

    def cut(self) -> bool:
        """Cut the current connection (as a network failure would); False when none is open."""
        if self._connection is None or self._connection.done():
            return False
        self.cuts += 1
        self._connection.cancel()
        return True

    async def run(self) -> None:
        """Connect, record, reconnect from the cursor, until cancelled."""
        while not self.problems:
            self.connections += 1
            url = self.rng.choice(self.urls())
            self._connection = asyncio.create_task(self._socket(url) if self.kind == "ws" else self._poll(url))
            try:
                await self._connection
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr] - the soak is stopping us
                    self._connection.cancel()
                    raise
                continue  # cut: reconnect at once
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI, httpx.HTTPError) as error:
                self.drops[type(error).__name__] += 1
            await asyncio.sleep(0.1 + self.rng.random() * 0.4)

    async def _socket(self, url: str) -> None:
        query = urlencode({"after": self.cursor} if self.cursor else {})
        target = url.replace("http://", "ws://", 1) + "/api/events/ws" + (f"?{query}" if query else "")
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            async with connect(target, additional_headers=headers, open_timeout=5, close_timeout=1,
                               compression=None, proxy=None) as ws:  # fmt: skip
                while True:
                    async with asyncio.timeout(40):  # pings come every 15 s of silence
                        message = json.loads(await ws.recv())
                    if message["type"] == "event":
                        self._record(message["event"])
                    elif message["type"] == "reset":
                        self.problems.append(f"{self.name}: reset: {message.get('detail')}")
                        return
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else 1006
            if code in PERMANENT:
                self.problems.append(f"{self.name}: the socket was refused with {code}: {closed.rcvd.reason}")
            self.drops[f"close {code}"] += 1

    async def _poll(self, url: str) -> None:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {self.token}"}) as http:
            while True:
                params = {"limit": 200, "wait": 5, **({"after": self.cursor} if self.cursor else {})}
                response = await http.get("/api/events", params=params, timeout=15)
                if response.status_code == 503:
                    self.drops["503"] += 1
                    await asyncio.sleep(0.3)
                    continue
                if response.status_code != 200:
                    self.problems.append(f"{self.name}: GET /api/events answered {response.status_code}: {response.text[:200]}")
                    return
                page = response.json()
                for event in page["events"]:
                    self._record(event)
                self.cursor = page["next_cursor"]
