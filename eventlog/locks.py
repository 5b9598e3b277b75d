"""Every PostgreSQL advisory-lock key cliplog takes, in one place, so that no two uses share a key by accident.

Two keys are also written in SQL migrations and must not change: the position allocator's (001, 005, 021) and the
appenders' shared lock that the safe horizon looks for in `pg_locks` (005). `tests/unit/test_locks.py` checks that
the keys are distinct and that those two match the migrations.
"""

MIGRATIONS = 72615  # eventlog/migrate.py: one migrator at a time
POSITION_ALLOCATOR = 72616  # cliplog_allocate_positions (SQL, migrations 001, 005 and 021)
REACTOR = 72617  # handlers/reactor.py: the one reactor (session lock on its leader connection)
REAPER = 72618  # handlers/reaper.py: the one reaper
APPENDERS = 72619  # shared, transaction-level: "this transaction appends" (SQL, migration 005; the safe horizon)
REBUILD = 72620  # projections/rebuild.py: one `cliplog rebuild` at a time
ORPHAN_SWEEP = 72621  # handlers/reaper.py: the one orphan sweep (local files or S3 objects under the output prefix)
METRICS_FOLLOWER = 72631  # handlers/metrics.py: the one metrics-projection follower
METRICS_WRITER = 72632  # projections/metrics.py: one metrics batch at a time (transaction-level)
