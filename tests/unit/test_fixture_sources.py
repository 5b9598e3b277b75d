"""Every test takes PostgreSQL and Redis from the session fixtures (tests/conftest.py), which pick the machine's or
the embedded ones: a test that names the machine's Redis itself fails in the run where it is out of reach, and shares
a database number with anything else on the machine (issue 16)."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
ALLOWED = {TESTS / "conftest.py", TESTS / "redis_claim.py", Path(__file__).resolve()}


def test_no_test_names_the_machines_redis_or_postgresql() -> None:
    offenders = [
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("*.py")
        if path not in ALLOWED and any(address in path.read_text() for address in (":6379", ":5432"))
    ]
    assert offenders == [], f"use the redis_url / admin_url fixtures instead: {offenders}"
