"""The Litestar application: one factory; its services come from the wiring (`runtime.bootstrap.web_app`)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

from litestar import Litestar, Request, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.static_files import create_static_files_router

from api import errors, feed, ui_routes
from api.auth import bearer, user_for_token
from api.clips import ClipsController, ProjectActionsController
from api.deps import ServicesDep
from api.health import health, metrics
from api.views import RawJsonSchema
from usecases.services import Services

STATIC = Path(__file__).parent / "static"


def provide_services(state: State) -> Services:
    return state.services


async def provide_user(request: Request, services: ServicesDep) -> str:
    return await user_for_token(services.pool, bearer(request.headers.get("authorization")))


@get("/schema", include_in_schema=False, sync_to_thread=False)
def openapi_document(request: Request) -> dict:
    return request.app.openapi_schema.to_schema()


def create_app(services: Services | Callable[[], Awaitable[Services]]) -> Litestar:
    """The app on `services`, or on the services `services()` opens when the app starts (and closed when it stops)."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        opened = services if isinstance(services, Services) else await services()
        app.state.services = opened
        try:
            yield
        finally:
            if opened is not services:
                await opened.close()

    route_handlers: list = [ClipsController, ProjectActionsController, health, metrics, openapi_document, *feed.ROUTES, *ui_routes.ROUTES]
    if STATIC.is_dir():
        route_handlers.append(create_static_files_router(path="/", directories=[STATIC], html_mode=True))
    return Litestar(
        route_handlers=route_handlers,
        dependencies={"services": Provide(provide_services, sync_to_thread=False), "user": Provide(provide_user)},
        exception_handlers=errors.HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan, feed.lifespan],  # the feed's broker starts after the services, stops before them
        openapi_config=OpenAPIConfig(title="cliplog", version="1", path="/schema/ui"),
        plugins=[RawJsonSchema()],
        debug=False,
    )
