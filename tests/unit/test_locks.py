"""The advisory-lock keys are distinct, and the two that SQL migrations hard-code match `eventlog.locks`."""

from __future__ import annotations

import re

from eventlog import locks
from eventlog.migrate import MIGRATIONS_DIR


def test_every_advisory_lock_key_is_used_once() -> None:
    keys = {name: value for name, value in vars(locks).items() if name.isupper()}
    assert len(set(keys.values())) == len(keys), keys


def test_the_keys_in_the_migrations_are_the_registrys() -> None:
    sql = "\n".join(path.read_text() for path in sorted(MIGRATIONS_DIR.glob("*.sql")))
    in_sql = {int(key) for key in re.findall(r"pg_advisory\w*\((\d+)\)", sql)}
    assert in_sql == {locks.POSITION_ALLOCATOR, locks.APPENDERS}
    assert f"objid = {locks.APPENDERS}" in sql  # the safe horizon looks for the appenders' lock by this key
