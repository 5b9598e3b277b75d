"""The edge where errors become HTTP: every answer is JSON `{status_code, detail, extra?}`, never a traceback."""

from __future__ import annotations

import logging

import asyncpg
from litestar import Request, Response
from litestar.exceptions import HTTPException

from api.auth import Unauthorized
from domain import errors
from storage.base import StorageError
from usecases.services import DEPENDENCY_ERRORS

log = logging.getLogger("cliplog.api")

STATUS: dict[type[errors.CliplogError], int] = {
    errors.InvalidInput: 400,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.StaleAttempt: 409,
    errors.CursorFromAnotherLog: 410,
    errors.Unavailable: 503,
}



def status_for(error: errors.CliplogError) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 400


def body(status_code: int, detail: str, extra: dict | None = None) -> dict:
    content: dict = {"status_code": status_code, "detail": detail}
    if extra:
        content["extra"] = extra
    return content


def domain_error(_: Request, error: errors.CliplogError) -> Response:
    code = status_for(error)
    headers = {"Retry-After": "2"} if code == 503 else None
    return Response(body(code, error.detail, error.extra or None), status_code=code, headers=headers)


def storage_error(request: Request, error: StorageError) -> Response:
    """A storage failure no route turned into its own answer: 503 (its message names the bucket and key, never a
    presigned URL or a credential)."""
    log.warning("%s %s: storage: %s", request.method, request.url.path, error.message)
    return Response(
        body(503, f"object storage failed: {error.message}; try again shortly", {"code": error.code}),
        status_code=503,
        headers={"Retry-After": "2"},
    )


def unauthorized(_: Request, error: Unauthorized) -> Response:
    return Response(body(401, str(error)), status_code=401, headers={"WWW-Authenticate": "Bearer"})


def http_error(_: Request, error: HTTPException) -> Response:
    extra = error.extra if isinstance(error.extra, (dict, list)) and error.extra else None
    content = body(error.status_code, error.detail, None)
    if extra:
        content["extra"] = extra
    return Response(content, status_code=error.status_code, headers=error.headers)


def unexpected(request: Request, error: Exception) -> Response:
    if isinstance(error, DEPENDENCY_ERRORS) or _is_disconnect(error):
        log.warning("%s %s: dependency unavailable: %s: %s", request.method, request.url.path, type(error).__name__, error)
        return Response(
            body(503, "a service cliplog depends on (PostgreSQL or Redis) is unavailable; try again shortly"),
            status_code=503,
            headers={"Retry-After": "2"},
        )
    log.exception("%s %s failed", request.method, request.url.path)
    return Response(body(500, "internal error; it has been logged"), status_code=500)


def _is_disconnect(error: Exception) -> bool:
    return isinstance(error, asyncpg.PostgresError) and getattr(error, "sqlstate", "").startswith(("08", "57P"))


HANDLERS = {
    errors.CliplogError: domain_error,
    Unauthorized: unauthorized,
    StorageError: storage_error,
    HTTPException: http_error,
    Exception: unexpected,
}
