"""Bearer tokens (stored as SHA-256 hashes) and project ownership."""

from __future__ import annotations

import hashlib
import re
import secrets

import asyncpg

from domain.errors import InvalidInput, NotFound

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Unauthorized(Exception):
    pass


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(db: asyncpg.Connection | asyncpg.Pool, user: str, token: str | None = None) -> str:
    token = token or secrets.token_urlsafe(32)
    await db.execute(
        "INSERT INTO api_tokens (token_hash, user_id) VALUES ($1, $2) ON CONFLICT (token_hash) DO UPDATE SET user_id = $2",
        hash_token(token),
        user,
    )
    return token


async def user_for_token(db: asyncpg.Connection | asyncpg.Pool, token: str | None) -> str:
    if not token:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    user = await db.fetchval("SELECT user_id FROM api_tokens WHERE token_hash = $1", hash_token(token))
    if user is None:
        raise Unauthorized("unknown or revoked token")
    return user


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def check_id(value: str, what: str) -> str:
    if not ID_PATTERN.fullmatch(value):
        raise InvalidInput(f"{what} must match [A-Za-z0-9_-]{{1,64}} (got {value!r})")
    return value


async def require_project(db: asyncpg.Connection | asyncpg.Pool, project_id: str, user: str) -> None:
    """404 unless the project exists and belongs to `user` (the same answer either way: no leak)."""
    check_id(project_id, "project_id")
    owner = await db.fetchval("SELECT owner FROM projects WHERE project_id = $1", project_id)
    if owner != user:
        raise NotFound(f"project {project_id!r} not found")


async def owned_projects(db: asyncpg.Connection | asyncpg.Pool, user: str) -> list[str]:
    return [r["project_id"] for r in await db.fetch("SELECT project_id FROM projects WHERE owner = $1", user)]
