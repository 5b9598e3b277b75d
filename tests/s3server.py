"""A real S3 API on localhost for the storage tests: moto's standalone server (`moto[server]`, speaking HTTP) in a
subprocess on a free port of 127.0.0.1, behind a TCP gate of this process that

- counts the bytes the store sends to clients (`gate.sent`, `gate.reset_counts()`), so a test can assert how much
  of a source FFmpeg and the probe really read;
- can be closed (`gate.refuse()`: new connections are refused and open ones reset, as a store that went away),
  hung (`gate.hang()`: connections are accepted and open ones kept, but nothing is passed on either way, as a store
  that stopped answering) and opened again (`gate.open()`), mid-test.

Clients (obstore, FFmpeg through presigned URLs) talk to `S3Server.endpoint`, the gate's address. moto itself is
never stopped during a test, so its buckets and objects survive a fault. Nothing leaves 127.0.0.1, so it works in
both test modes, also inside `unshare -n` with only loopback. The AWS credentials are test values set in the
environment of the moto process and given to the clients explicitly (`CREDENTIALS`), never taken from the machine.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

CREDENTIALS = {"access_key_id": "cliplog-test", "secret_access_key": "cliplog-test-secret"}
TEST_ENV = {"AWS_ACCESS_KEY_ID": CREDENTIALS["access_key_id"], "AWS_SECRET_ACCESS_KEY": CREDENTIALS["secret_access_key"],
            "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gate:
    """A TCP relay 127.0.0.1:<port> -> `target`, in a thread, that counts the bytes sent back and can fail."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.state = "open"  # "open" | "refuse" | "hang"
        self.sent = 0  # bytes from the store to clients since the last reset
        self.received = 0  # bytes from clients to the store
        self.connections = 0
        self._lock = threading.Lock()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ, "accept")
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="s3-gate", daemon=True)
        self._thread.start()

    # what a test calls ------------------------------------------------------------------------------------------

    def reset_counts(self) -> None:
        with self._lock:
            self.sent = self.received = self.connections = 0

    def refuse(self) -> None:
        """New connections are reset at once, open ones are reset: a store that went away."""
        self._set("refuse")

    def hang(self) -> None:
        """Connections are accepted but nothing is passed on: a store that stopped answering."""
        self._set("hang")

    def open(self) -> None:
        self._set("open")

    def _set(self, state: str) -> None:
        with self._lock:
            self.state = state
        self._wake_w.send(b"x")

    def close(self) -> None:
        self._stopping = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        for sock in list(self._pairs):
            sock.close()
        self._selector.close()
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()

    # the relay ---------------------------------------------------------------------------------------------------

    def _drop(self, sock: socket.socket) -> None:
        peer = self._pairs.pop(sock, None)
        for one in (sock, peer):
            if one is None:
                continue
            self._pairs.pop(one, None)
            try:
                self._selector.unregister(one)
            except (KeyError, ValueError):
                pass
            try:  # a reset, not a clean close: RST as a crashed store would
                one.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            one.close()

    def _run(self) -> None:
        while not self._stopping:
            with self._lock:
                state = self.state
            if state == "refuse":
                for sock in [s for s in self._pairs]:
                    self._drop(sock)
            for key, _ in self._selector.select(timeout=0.5):
                if key.data == "wake":
                    key.fileobj.recv(64)  # type: ignore[union-attr]
                    continue
                if key.data == "accept":
                    self._accept(state)
                    continue
                if state == "hang":
                    continue  # read nothing: the kernel's buffers fill and both sides wait
                self._relay(key.fileobj, key.data)  # type: ignore[arg-type]
            if state == "hang":
                time.sleep(0.05)  # readable sockets stay readable: do not spin

    def _accept(self, state: str) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        if state == "refuse":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setblocking(False)
        self._pairs[client], self._pairs[upstream] = upstream, client
        self._selector.register(client, selectors.EVENT_READ, "client")
        self._selector.register(upstream, selectors.EVENT_READ, "store")
        with self._lock:
            self.connections += 1

    def _relay(self, sock: socket.socket, side: str) -> None:
        peer = self._pairs.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        try:
            peer.setblocking(True)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._drop(sock)
            return
        with self._lock:
            if side == "store":
                self.sent += len(data)
            else:
                self.received += len(data)


class S3Server:
    """moto's server in a subprocess, and the gate in front of it."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        env = {**os.environ, **TEST_ENV}
        for variable in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env.pop(variable, None)
        self.log = (log_dir / "moto.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        self.direct = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.direct}/moto-api/data.json", timeout=2).read()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's server did not start (see {log_dir / 'moto.log'})") from None
                time.sleep(0.1)
        self.gate = Gate(("127.0.0.1", self.port))
        self.endpoint = f"http://127.0.0.1:{self.gate.port}"

    def create_bucket(self, name: str) -> None:
        """Straight to moto (not through the gate), with no signature: moto does not check one by default."""
        request = urllib.request.Request(f"{self.direct}/{name}", method="PUT")
        urllib.request.urlopen(request, timeout=10).read()

    def put_object(self, bucket: str, key: str, path: Path) -> None:
        self.put_bytes(bucket, key, path.read_bytes())

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        # A binary body (urllib's default form type makes the server parse it as a form and wait for more).
        request = urllib.request.Request(
            f"{self.direct}/{bucket}/{key}", data=data, method="PUT", headers={"Content-Type": "application/octet-stream"}
        )
        urllib.request.urlopen(request, timeout=60).read()

    def stop(self) -> None:
        self.gate.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
