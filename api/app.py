"""The Litestar application: one factory; its services come from the wiring (`runtime.bootstrap.web_app`).

Every route that needs a token sits on one router with the bearer middleware (`api.auth.BearerAuthentication`:
checked before the body is read) and the bearer security requirement in the OpenAPI document. Responses are
compressed (brotli, else gzip) through Litestar's `CompressionConfig`, except the clip files. CORS follows
`CLIPLOG_CORS_ORIGINS` through Litestar's `CORSConfig` (none by default).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

from litestar import Litestar, Request, Router, head
from litestar.config.compression import CompressionConfig
from litestar.config.cors import CORSConfig
from litestar.datastructures import CacheControlHeader, State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.response import File
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router
from litestar.types import Message, Scope

from api import errors, feed, openapi, ui_routes
from api.auth import BearerAuthentication
from api.clips import ClipsController, ProjectActionsController
from api.files import answer_not_modified, typed_head
from api.health import health, metrics
from api.views import RawJsonSchema
from handlers import metrics as metrics_projection
from usecases.services import Services

STATIC = Path(__file__).parent / "static"
# What a browser client sends and reads (CORS): the bearer token, JSON bodies, ranges and validators of files.
CORS_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "Range", "If-Range", "If-None-Match",
                "If-Modified-Since"]
CORS_EXPOSED = ["Content-Range", "Accept-Ranges", "Content-Length", "ETag", "Last-Modified", "Retry-After",
                "WWW-Authenticate"]


def provide_services(state: State) -> Services:
    return state.services


def provide_user(request: Request) -> str:
    return request.user  # set by BearerAuthentication


@openapi.get_or_head("/schema", include_in_schema=False, sync_to_thread=False)
def openapi_document(request: Request) -> dict:
    return request.app.openapi_schema.to_schema()


@openapi.get_or_head("/schema/asyncapi", include_in_schema=False, sync_to_thread=False)
def asyncapi_document(request: Request) -> dict:
    return openapi.asyncapi(request, feed.MESSAGES, feed.QUERY)


UI_CACHE = CacheControlHeader(no_cache=True)  # the UI's files are not fingerprinted: revalidate (304 while unchanged)


@head("/", include_in_schema=False, sync_to_thread=False)
def index_head() -> File:
    """Litestar's static router answers GET / (html mode) but not HEAD /."""
    return File(STATIC / "index.html", filename="index.html", media_type="text/html", content_disposition_type="inline")


async def head_without_body(message: Message, scope: Scope) -> None:
    """HEAD is GET without the body, whatever the ASGI server does with one."""
    if message["type"] == "http.response.body" and scope.get("method") == "HEAD":
        message["body"] = b""


def cors(origins: tuple[str, ...]) -> CORSConfig | None:
    if not origins:
        return None
    return CORSConfig(
        allow_origins=list(origins),
        allow_methods=["GET", "HEAD", "POST", "OPTIONS"],
        allow_headers=CORS_HEADERS,
        expose_headers=CORS_EXPOSED,
        allow_credentials=False,  # the token travels in a header, never in cookies
        max_age=600,
    )


def _complete_allow_headers(app: Litestar) -> Litestar:
    """Litestar 2's default OPTIONS handler of a path whose handlers were registered one at a time lists only the
    first one's methods in `Allow` (litestar-org/litestar#4169, fixed in v3): point each at its final route."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            function = handler.fn
            if getattr(function, "__name__", "") != "options_handler":
                continue
            for cell in function.__closure__ or ():
                if isinstance(cell.cell_contents, HTTPRoute):
                    cell.cell_contents = route
    return app


def create_app(
    services: Services | Callable[[], Awaitable[Services]], *, cors_origins: tuple[str, ...] | None = None
) -> Litestar:
    """The app on `services`, or on the services `services()` opens when the app starts (and closed when it stops).
    `cors_origins`: CLIPLOG_CORS_ORIGINS (by default those of `services`' settings, when they are given)."""
    if cors_origins is None:
        cors_origins = services.settings.cors_origins if isinstance(services, Services) else ()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        opened = services if isinstance(services, Services) else await services()
        app.state.services = opened
        openapi.refine(app.openapi_schema, app.routes)
        # the metrics projection's follower (one leads across all workers and API instances): /metrics stays
        # current where no worker runs
        follower = asyncio.create_task(metrics_projection.follow(opened), name="metrics")
        try:
            yield
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            if opened is not services:
                await opened.close()

    authenticated = Router(
        path="/",
        route_handlers=[ClipsController, ProjectActionsController, *feed.ROUTES, *ui_routes.ROUTES],
        middleware=[DefineMiddleware(BearerAuthentication, scopes={"http"})],
        security=openapi.SECURITY,
    )
    route_handlers: list = [authenticated, health, metrics, openapi_document, asyncapi_document]
    if STATIC.is_dir():
        ui = create_static_files_router(
            path="/", directories=[STATIC], html_mode=True, cache_control=UI_CACHE,
            middleware=[answer_not_modified, typed_head],
        )
        ui.register(index_head)
        route_handlers.append(ui)
    app = Litestar(
        route_handlers=route_handlers,
        dependencies={"services": Provide(provide_services, sync_to_thread=False),
                      "user": Provide(provide_user, sync_to_thread=False)},
        exception_handlers=errors.HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan, feed.lifespan],  # the feed's broker starts after the services, stops before them
        openapi_config=OpenAPIConfig(title="cliplog", version="1", path="/schema/ui", components=openapi.COMPONENTS),
        plugins=[RawJsonSchema()],
        compression_config=CompressionConfig(
            backend="brotli", brotli_gzip_fallback=True, minimum_size=500, exclude_opt_key="skip_compression"
        ),
        cors_config=cors(cors_origins),
        before_send=[head_without_body],
        debug=False,
    )
    return _complete_allow_headers(app)
