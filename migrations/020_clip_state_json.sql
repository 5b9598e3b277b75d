-- The clip-status projection keeps its state as `json` (the text as written, checked to be JSON) instead of
-- `jsonb`. PostgreSQL built jsonb's binary form at every write, and a rebuild writes a row per clip: over a log of
-- 1,000,000 events (166,667 rows of ~580-byte states) that parse took about 3 s of the COPY's 5 s of CPU, json's
-- check about 0.1 s (bench/README.md, `replay_bench`). Nothing queries inside the state but `->`/`->>` (json has
-- them too); readers decode it in Python (eventlog/store.py `init_connection` gives both types as Python objects).
--
-- The rows already written keep their values: `USING state::json` writes each as jsonb prints it (keys in jsonb's
-- order, a space after each colon and comma), which decodes to the same state (tests/integration/test_rebuild.py).
-- Changing the type rewrites the table under its exclusive lock, which waits behind any transaction reading
-- `clips` while every read and append queues behind it: give up after 10 s instead (`cliplog migrate` fails and
-- can be run again).
SET LOCAL lock_timeout = '10s';
ALTER TABLE clips ALTER COLUMN state TYPE json USING state::json;
