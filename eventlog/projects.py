"""Project ownership: a project belongs to the user who registered its first clip."""

from __future__ import annotations

import asyncpg

from domain.errors import NotFound


async def claim_project(conn: asyncpg.Connection, project_id: str, user: str) -> None:
    """Within the registering transaction: the project becomes `user`'s unless someone else has it (404)."""
    await conn.execute(
        "INSERT INTO projects (project_id, owner) VALUES ($1, $2) ON CONFLICT (project_id) DO NOTHING", project_id, user
    )
    if await conn.fetchval("SELECT owner FROM projects WHERE project_id = $1", project_id) != user:
        raise NotFound(f"project {project_id!r} not found")
