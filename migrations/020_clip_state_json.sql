-- The clip-status projection keeps its state as `json` (the text as written, checked to be JSON) instead of
-- `jsonb`. PostgreSQL built jsonb's binary form at every write, and a rebuild writes a row per clip: over a log of
-- 1,000,000 events (166,667 rows of ~580-byte states) that parse took about 3 s of the COPY's 5 s of CPU, json's
-- check about 0.1 s (bench/README.md, `replay_bench`). Nothing queries inside the state but `->`/`->>` (json has
-- them too); readers decode it in Python (eventlog/store.py `init_connection` gives both types as Python objects).
--
-- The rows already written keep their values: `USING state::json` writes each as jsonb prints it (keys in jsonb's
-- order, a space after each colon and comma), which decodes to the same state (tests/integration/test_rebuild.py).
-- Changing the type rewrites the table and its indexes under its exclusive lock, held for the whole rewrite: every
-- append (which writes its clip's row), clip read and the dispatcher wait until it ends (measured: 4.2 s for 166,667
-- clips on a loaded 2-core machine, ~25 µs a clip; plan the upgrade of a large deployment for a quiet moment, see
-- docs/scaling.md). Taking the lock waits behind any transaction reading `clips` while every read and append queues
-- behind the waiting ALTER: that wait gives up after 10 s (`cliplog migrate` fails and can be run again).
SET LOCAL lock_timeout = '10s';
ALTER TABLE clips ALTER COLUMN state TYPE json USING state::json;
