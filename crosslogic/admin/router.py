"""`build_admin_router`: every `/admin/v1` resource on one APIRouter, mounted by the ingress app."""

from __future__ import annotations

from fastapi import APIRouter

from billing.admin_routes import build_billing_admin_router
from crosslogic.admin.deps import AdminDeps, require_scope
from crosslogic.admin.jwt_auth import AdminScope
from crosslogic.admin.routes_audit import audit_router
from crosslogic.admin.routes_keys import keys_router
from crosslogic.admin.routes_models import models_router
from crosslogic.admin.routes_tenants import tenants_router
from crosslogic.api.errors import error_responses
from crosslogic.metering.routes import build_usage_router

ADMIN_PREFIX = "/admin/v1"


def build_admin_router(deps: AdminDeps) -> APIRouter:
    # Every admin route can answer these; 400 replaces FastAPI's 422 (see install_error_handlers).
    router = APIRouter(prefix=ADMIN_PREFIX, responses=error_responses(401, 403, 404))
    router.include_router(tenants_router(deps))
    router.include_router(keys_router(deps))
    router.include_router(models_router(deps))
    router.include_router(audit_router(deps))
    reader = require_scope(deps, AdminScope.READ)
    writer = require_scope(deps, AdminScope.WRITE)
    router.include_router(build_usage_router(deps.pool, reader))
    router.include_router(build_billing_admin_router(deps.pool, reader, writer))
    return router
