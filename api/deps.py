"""Names of the dependencies route handlers receive (provided in api/app.py)."""

from __future__ import annotations

from litestar.di import NamedDependency

from usecases.services import Services

ServicesDep = NamedDependency[Services]  # the process's wired services
UserDep = NamedDependency[str]  # the caller, from the bearer token
