"""`build_admin_router`: every `/admin/v1` resource on one APIRouter, mounted by the ingress app.

Billing's admin routes come from the caller (`extra`): the core never imports `billing`, which builds
on it (deployments/ingress.py, where the app is assembled, mounts them).
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter

from crosslogic.admin.deps import AdminDeps, require_scope
from crosslogic.admin.jwt_auth import AdminScope
from crosslogic.admin.routes_audit import audit_router
from crosslogic.admin.routes_keys import keys_router
from crosslogic.admin.routes_models import models_router
from crosslogic.admin.routes_regions import RegionsAdmin, regions_router
from crosslogic.admin.routes_tenants import tenants_router
from crosslogic.api.errors import error_responses
from crosslogic.metering.routes import build_usage_router

ADMIN_PREFIX = "/admin/v1"


def build_admin_router(
    deps: AdminDeps, regions: RegionsAdmin | None = None, extra: Iterable[APIRouter] = ()
) -> APIRouter:
    """`regions`: the master secret and the live region view (None: registry only, no secrets).

    `extra`: more `/admin/v1` resources (e.g. `billing.admin_routes.billing_admin_router(deps)`).
    """
    # Every admin route can answer these; 400 replaces FastAPI's 422 (see install_error_handlers).
    router = APIRouter(prefix=ADMIN_PREFIX, responses=error_responses(401, 403, 404))
    router.include_router(tenants_router(deps))
    router.include_router(keys_router(deps))
    router.include_router(models_router(deps))
    router.include_router(audit_router(deps))
    router.include_router(regions_router(deps, regions or RegionsAdmin()))
    router.include_router(build_usage_router(deps.pool, require_scope(deps, AdminScope.READ)))
    for more in extra:
        router.include_router(more)
    return router
