"""Every PostgreSQL advisory lock key has one purpose. Two purposes sharing a key block each other for no reason: a
rebuild that took the reactor's key (found by `cliplog soak`: `cliplog rebuild` refused "another rebuild is running"
whenever a worker led the reactor, and a running rebuild would have stopped the reactor). Read from the source: the
module-level `*LOCK*` integer constants of the packages, and the keys the migrations' SQL locks."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

from tests.unit.test_layers import PACKAGES, ROOT, module_name

SQL_KEY = re.compile(r"advisory\w*\(\s*(\d+)\s*\)|objid\s*=\s*(\d+)")


def lock_owners(python: dict[str, str], sql: dict[str, str]) -> dict[int, set[str]]:
    """key -> who uses it: `module.CONSTANT` for Python, "migrations" for any SQL (one purpose per key there)."""
    owners: dict[int, set[str]] = defaultdict(set)
    for module, source in python.items():
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and type(node.value.value) is int:
                for target in node.targets:
                    if isinstance(target, ast.Name) and "LOCK" in target.id.upper():
                        owners[node.value.value].add(f"{module}.{target.id}")
    for text in sql.values():
        for match in SQL_KEY.finditer(text):
            owners[int(match[1] or match[2])].add("migrations")
    return dict(owners)


def shared(owners: dict[int, set[str]]) -> dict[int, list[str]]:
    return {key: sorted(users) for key, users in sorted(owners.items()) if len(users) > 1}


def test_every_advisory_lock_key_has_one_purpose():
    python = {module_name(p): p.read_text() for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    sql = {p.name: p.read_text() for p in (ROOT / "migrations").glob("*.sql")}
    owners = lock_owners(python, sql)
    assert {72615, 72616, 72617, 72618} <= owners.keys()  # migrate, positions, reactor, reaper: the scan sees them
    assert shared(owners) == {}


def test_the_check_finds_a_shared_key():
    python = {
        "handlers.reactor": "LEADER_LOCK = 72617\n",
        "projections.rebuild": "_LOCK = 72617  # one rebuild at a time\nTIMEOUT = 72617\n",
        "handlers.orphans": "LEADER_LOCK = 72619\n",
    }
    sql = {"005.sql": "PERFORM pg_advisory_xact_lock_shared(72619);\nWHERE objid = 72619"}
    assert shared(lock_owners(python, sql)) == {
        72617: ["handlers.reactor.LEADER_LOCK", "projections.rebuild._LOCK"],
        72619: ["handlers.orphans.LEADER_LOCK", "migrations"],
    }
