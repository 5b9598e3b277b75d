"""Bearer tokens (stored as SHA-256 hashes, each listed by an id: the first 16 hex digits of its hash), the
authentication middleware of the HTTP API, and project ownership."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime

import asyncpg
import msgspec
from litestar.connection import ASGIConnection
from litestar.middleware.authentication import AbstractAuthenticationMiddleware, AuthenticationResult

from domain.errors import InvalidInput, NotFound

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Unauthorized(Exception):
    pass


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """32 random bytes, URL-safe; never starting with '-', which a command line would read as an option
    (`cliplog token revoke -abc...` failed for one token in 64)."""
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


async def create_token(db: asyncpg.Connection | asyncpg.Pool, user: str, token: str | None = None) -> str:
    token = token or new_token()
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


class TokenInfo(msgspec.Struct, frozen=True):
    token_id: str
    user: str
    created_at: datetime


TOKEN_ID_LENGTH = 16


def token_id(token_hash: str) -> str:
    return token_hash[:TOKEN_ID_LENGTH]


async def list_tokens(db: asyncpg.Connection | asyncpg.Pool, user: str) -> list[TokenInfo]:
    rows = await db.fetch(
        "SELECT token_hash, user_id, created_at FROM api_tokens WHERE user_id = $1 ORDER BY created_at, token_hash",
        user,
    )
    return [TokenInfo(token_id(r["token_hash"]), r["user_id"], r["created_at"]) for r in rows]


async def revoke_token(db: asyncpg.Connection | asyncpg.Pool, token_or_id: str) -> TokenInfo | None:
    """Delete the token given by its value or by its id (as `list_tokens` shows it); None if there is none.
    Requests with it fail from now on; open WebSockets with it close within `CLIPLOG_TOKEN_CHECK_INTERVAL`."""
    row = await db.fetchrow(
        "DELETE FROM api_tokens WHERE token_hash = $1 RETURNING token_hash, user_id, created_at", hash_token(token_or_id)
    )
    if row is None and len(token_or_id) == TOKEN_ID_LENGTH:  # an id: only if it names exactly one token
        hashes = await db.fetch("SELECT token_hash FROM api_tokens WHERE left(token_hash, $2) = $1", token_or_id, TOKEN_ID_LENGTH)
        if len(hashes) == 1:
            row = await db.fetchrow(
                "DELETE FROM api_tokens WHERE token_hash = $1 RETURNING token_hash, user_id, created_at", hashes[0][0]
            )
    return TokenInfo(token_id(row["token_hash"]), row["user_id"], row["created_at"]) if row else None


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


class BearerAuthentication(AbstractAuthenticationMiddleware):
    """The caller from `Authorization: Bearer`, before anything else about the request (its body included) is
    looked at: a bad token is a 401 whatever else is wrong. Mounted on the router of the routes that need a token
    (`api.app`), for HTTP only (the WebSocket answers with a close code instead). `request.user` is the user id."""

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        pool = connection.app.state.services.pool
        user = await user_for_token(pool, bearer(connection.headers.get("authorization")))
        return AuthenticationResult(user=user, auth=None)
