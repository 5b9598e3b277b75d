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
import socket
import struct
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
    """A TCP relay 127.0.0.1:<port> -> `target` that counts the bytes sent back and can fail: a thread accepts,
    and each connection has a thread per direction (so a client that stops reading holds up no other)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.state = "open"  # "open" | "refuse" | "hang"
        self.sent = 0  # bytes from the store to clients since the last reset
        self.received = 0  # bytes from clients to the store
        self.connections = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._open: set[socket.socket] = set()
        self._ended: dict[int, set[str]] = {}  # per connection: the directions that ended cleanly
        self._refuse_at: int | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._accept_forever, name="s3-gate", daemon=True)
        self._thread.start()

    # what a test calls ------------------------------------------------------------------------------------------

    def reset_counts(self) -> None:
        with self._lock:
            self.sent = self.received = self.connections = 0

    def refuse(self) -> None:
        """New connections are reset at once and open ones are reset: a store that went away."""
        with self._lock:
            self.state = "refuse"
            doomed = list(self._open)
            self._changed.notify_all()
        for sock in doomed:
            _reset(sock)

    def refuse_once_received(self, total: int) -> None:
        """`refuse()` as soon as clients have sent `total` bytes in all (`received`): in the middle of an upload."""
        with self._lock:
            self._refuse_at = total

    def hang(self) -> None:
        """Connections are accepted but nothing more is passed on either way: a store that stopped answering."""
        with self._lock:
            self.state = "hang"
            self._changed.notify_all()

    def open(self) -> None:
        with self._lock:
            self.state = "open"
            self._refuse_at = None
            self._changed.notify_all()

    def close(self) -> None:
        self._stopping = True
        self.open()
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()  # wakes accept()
        except OSError:
            pass
        self._thread.join(5)
        with self._lock:
            doomed = list(self._open)
        for sock in doomed:
            _reset(sock)
        self.listener.close()

    # the relay ---------------------------------------------------------------------------------------------------

    def _accept_forever(self) -> None:
        while not self._stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                state = self.state
            if self._stopping or state == "refuse":
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self.connections += 1
                self._open.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, "received"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, "sent"), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, counter: str) -> None:
        """Relay one direction. A clean end (EOF) is passed on as a half-close, so what is still buffered reaches
        the peer; the connection is closed when both directions have ended. A failure, or `refuse`, resets both."""
        clean = False
        try:
            while True:
                data = source.recv(256 * 1024)
                if not data:
                    clean = True
                    break
                with self._lock:
                    while self.state == "hang" and not self._stopping:
                        self._changed.wait()
                    if self.state == "refuse":
                        break
                    setattr(self, counter, getattr(self, counter) + len(data))
                    tripped = self._refuse_at is not None and self.received >= self._refuse_at
                    if tripped:
                        self._refuse_at = None
                if tripped:
                    self.refuse()
                    break
                target.sendall(data)
        except OSError:
            pass
        with self._lock:
            ended = self._ended.setdefault(id(target) ^ id(source), set())
            ended.add(counter)
            both = len(ended) == 2
            if both or not clean:
                self._ended.pop(id(target) ^ id(source), None)
                self._open.discard(source)
                self._open.discard(target)
        if not clean:
            _reset(source)
            _reset(target)
            return
        try:
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if both:
            source.close()
            target.close()


def _reset(sock: socket.socket) -> None:
    """Close with a reset (RST), as a crashed store's connections end."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)  # wakes a thread blocked in recv() on it; sends nothing
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class S3Server:
    """moto's server in a subprocess, and the gate in front of it. `unauthenticated_actions`: moto checks
    signatures and IAM policies after that many requests (its INITIAL_NO_AUTH_ACTION_COUNT; default never)."""

    def __init__(self, log_dir: Path, unauthenticated_actions: int | None = None) -> None:
        self.port = free_port()
        env = {**os.environ, **TEST_ENV}
        if unauthenticated_actions is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(unauthenticated_actions)
        for variable in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env.pop(variable, None)
        self.log = (log_dir / f"moto-{self.port}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        self.direct = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:  # a TCP connection, not a request: with IAM checks on, every request counts
                socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's server did not start (see {self.log.name})") from None
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


DENIED_PREFIX = "sources/locked/"
IAM_SETUP_ACTIONS = 5  # the requests `deny_a_prefix` makes before moto starts checking


def deny_a_prefix(server: S3Server, bucket: str) -> dict[str, str]:
    """On a server started with `unauthenticated_actions=IAM_SETUP_ACTIONS`: make `bucket`, and a user allowed
    everything on it except reading under DENIED_PREFIX; returns that user's credentials. Exactly
    IAM_SETUP_ACTIONS requests, so that every later one is checked (signature and policy)."""
    import json

    import boto3

    options = {"endpoint_url": server.direct, "region_name": "us-east-1", "aws_access_key_id": "setup",
               "aws_secret_access_key": "setup"}  # fmt: skip
    boto3.client("s3", **options).create_bucket(Bucket=bucket)  # 1
    iam = boto3.client("iam", **options)
    iam.create_user(UserName="worker")  # 2
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/{DENIED_PREFIX}*"},
    ]}  # fmt: skip
    iam.put_user_policy(UserName="worker", PolicyName="no-locked-sources", PolicyDocument=json.dumps(policy))  # 3
    key = iam.create_access_key(UserName="worker")["AccessKey"]  # 4
    credentials = {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}
    boto3.client(
        "s3", endpoint_url=server.direct, region_name="us-east-1", aws_access_key_id=credentials["access_key_id"],
        aws_secret_access_key=credentials["secret_access_key"],
    ).put_object(Bucket=bucket, Key=f"{DENIED_PREFIX}match.mp4", Body=b"a video no one may read")  # 5
    return credentials
