"""A Redis database of the machine's server claimed by one test session (see the docstring of tests/conftest.py)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

CLAIM_TTL = 120  # seconds; refreshed every third of it while the session runs
DATABASES = range(1, 16)  # database 0 holds the claim keys and is never flushed
SESSION_MARKER = "cliplog-test:session"  # in a claimed database: it is (or was) a test session's

# Refresh (ARGV[2] = TTL) or delete (ARGV[2] = 0) the claim KEYS[1] only while it still holds this session's token.
_IF_OURS = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then return redis.call('DEL', KEYS[1]) end
return redis.call('EXPIRE', KEYS[1], ARGV[2])
"""


def claim_key(db: int) -> str:
    return f"cliplog-test:claim:{db}"


@contextmanager
def claimed_database(server_url: str) -> Iterator[str]:
    """`with claimed_database("redis://127.0.0.1:6379") as url`: the URL of a database of that server no other session
    holds, empty (flushed at the start and at the end). Skips databases holding keys of anything but a test session."""
    claims = redis.Redis.from_url(f"{server_url}/0")
    if_ours = claims.register_script(_IF_OURS)
    token = secrets.token_hex(8)
    for db in DATABASES:
        if not claims.set(claim_key(db), token, nx=True, ex=CLAIM_TTL):
            continue  # another session's
        target = redis.Redis.from_url(f"{server_url}/{db}")
        if target.dbsize() == 0 or target.exists(SESSION_MARKER):
            break
        target.close()  # someone else's data: leave it alone
        if_ours(keys=[claim_key(db)], args=[token, 0])
    else:
        claims.close()
        raise RuntimeError(
            f"no free Redis database among {DATABASES.start}..{DATABASES.stop - 1} on {server_url} (each is claimed by"
            " a test session or holds other keys); set CLIPLOG_TEST_REDIS_URL or CLIPLOG_TEST_EMBEDDED=1"
        )
    target.flushdb()
    target.set(SESSION_MARKER, token)
    stop = threading.Event()
    lost = threading.Event()

    def refresh() -> None:
        while not stop.wait(CLAIM_TTL / 3):
            if not if_ours(keys=[claim_key(db)], args=[token, CLAIM_TTL]):
                lost.set()
                return

    refresher = threading.Thread(target=refresh, name=f"redis-claim-{db}", daemon=True)
    refresher.start()
    try:
        yield f"{server_url}/{db}"
    finally:
        stop.set()
        refresher.join()
        if not lost.is_set():
            target.flushdb()
            if_ours(keys=[claim_key(db)], args=[token, 0])
        target.close()
        claims.close()
    if lost.is_set():
        raise RuntimeError(f"the session's claim on Redis database {db} expired while it ran; another may have shared it")
