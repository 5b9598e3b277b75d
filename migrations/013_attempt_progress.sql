-- Live progress of a running attempt, beside its lease (operational, not truth: see eventlog/progress.py). The
-- worker writes it at most once a second; a new attempt taking the lease row starts with none.

ALTER TABLE leases ADD COLUMN IF NOT EXISTS progress_percent double precision;
ALTER TABLE leases ADD COLUMN IF NOT EXISTS progress_speed double precision;
ALTER TABLE leases ADD COLUMN IF NOT EXISTS progress_eta_seconds double precision;
ALTER TABLE leases ADD COLUMN IF NOT EXISTS progress_at timestamptz;
