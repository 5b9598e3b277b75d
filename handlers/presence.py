"""Worker presence: each worker keeps the Redis key `PRESENCE_PREFIX + worker_id` alive (expiring after
`PRESENCE_TTL` seconds), holding its concurrency; the health check counts them, the dispatcher adds up their slots. Here, so that health need not import the worker."""

PRESENCE_PREFIX = "cliplog:worker:"
PRESENCE_TTL = 15
