"""The test sessions' claim on a database of a shared Redis (tests/redis_claim.py), against a real redis-server of
this test's own standing in for the machine's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis

from runtime.embedded import start_redis
from tests.redis_claim import CLAIM_TTL, DATABASES, SESSION_MARKER, claim_key, claimed_database


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    url, process = start_redis(tmp_path / "redis")
    try:
        yield url.rsplit("/", 1)[0]
    finally:
        process.kill()
        process.wait()


def db(server: str, number: int) -> redis.Redis:
    return redis.Redis.from_url(f"{server}/{number}", decode_responses=True)


def test_sessions_get_distinct_databases_and_leave_others_keys_alone(server: str) -> None:
    db(server, 1).set("someone-elses", "data")
    with claimed_database(server) as first, claimed_database(server) as second:
        assert (first, second) == (f"{server}/2", f"{server}/3")
        held = db(server, 0)
        assert 0 < held.ttl(claim_key(2)) <= CLAIM_TTL and held.get(claim_key(2)) != held.get(claim_key(3))
        db(server, 2).set("left-over", "x")
    assert db(server, 1).get("someone-elses") == "data"
    assert db(server, 2).dbsize() == 0 and db(server, 3).dbsize() == 0
    assert db(server, 0).keys("cliplog-test:*") == []


def test_a_crashed_sessions_database_is_flushed_and_reused(server: str) -> None:
    db(server, 1).set(SESSION_MARKER, "crashed")
    db(server, 1).set("left-over", "x")
    with claimed_database(server) as url:
        assert url == f"{server}/1"
        assert db(server, 1).keys() == [SESSION_MARKER]


def test_no_free_database_is_a_clear_error_that_flushes_nothing(server: str) -> None:
    with ExitStack() as stack:
        for _ in range(len(DATABASES) - 1):
            stack.enter_context(claimed_database(server))
        db(server, DATABASES.stop - 1).set("someone-elses", "data")
        with pytest.raises(RuntimeError, match="no free Redis database"):
            stack.enter_context(claimed_database(server))
    assert db(server, DATABASES.stop - 1).get("someone-elses") == "data"
    assert db(server, 0).keys("cliplog-test:*") == []
