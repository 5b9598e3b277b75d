"""The PostgreSQL side: the event log, the clip repository, migrations (asyncpg)."""
