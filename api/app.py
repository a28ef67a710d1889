"""The REST API as an ASGI app: the routers, problem+json errors, health and docs."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from api import (
    audit,
    automations,
    channels,
    executions,
    queues,
    schedules,
    secrets,
    waits,
    webhooks,
)
from api.gate import Gate
from api.metrics import RequestMetrics
from api.problems import documented, install
from service.health import readiness

# Swagger UI as the pinned `fastapi-offline` package ships it: the docs are served by
# this process and the browser fetches nothing from anywhere else. (No ReDoc: its page
# loads a logo from its vendor's site.)
DOCS_ASSETS = Path(str(files("fastapi_offline") / "static"))
ASSETS_URL = "/docs-assets"

DESCRIPTION = """\
Schedules multi-step HTTP automations, as the dashboard does, for scripts.

Every call but `/health`, `/ready` and the docs needs an API token (`Authorization: Bearer
<token>`), made by a workspace admin on the dashboard's Workspace page: it acts in
that workspace, with that role. A token makes at most STEPWISE_API_RATE_PER_MINUTE
calls a minute; past that it gets `429` with `Retry-After` (seconds). Errors are
`application/problem+json` (RFC 9457); refused input lists each field with the
message the dashboard shows. A call without a live token is refused (401) before its
body is read; no body may pass 4 MiB (413).

`POST /v1/hooks/{id}` or `/v1/webhooks/{id}` (an automation's webhook) needs no token:
the webhook's secret or a signature of the body proves the call, and each webhook takes at
most STEPWISE_API_RATE_PER_MINUTE proven calls a minute.

`POST /v1/callbacks/{token}` (an async step's `callback_url`) needs no token either: the
signed URL proves the call, for one step's try, until the step's timeout. Approval steps
are approved or rejected under `/v1/executions/{id}/steps/{key}/`; `GET /v1/waits` lists
what the workspace's runs wait for, and on whom.
"""


class Health(BaseModel):
    status: str


class CheckResult(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    status: str  # "ready" or "not ready"
    checks: dict[str, CheckResult]


def create_app() -> FastAPI:
    app = FastAPI(
        title="Stepwise", version="1", description=DESCRIPTION, docs_url=None, redoc_url=None
    )
    install(app)
    app.add_middleware(Gate)
    for module in (automations, schedules, executions, waits, queues, audit, channels, secrets):
        app.include_router(module.router, responses=documented(429))
    app.include_router(webhooks.router)
    app.include_router(waits.callbacks)
    app.mount(ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    app.add_middleware(RequestMetrics)  # served apart: api/metrics.py

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Stepwise API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            # No badge from the public validator: it would send our schema's URL out.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/health", tags=["health"])
    def health() -> Health:
        """The process is up (no token needed; it reads nothing)."""
        return Health(status="ok")

    @app.get(
        "/ready",
        tags=["health"],
        responses={503: {"model": Readiness, "description": "a check failed"}},
    )
    def ready(response: Response) -> Readiness:
        """PostgreSQL reachable and at the head migration, Redis reachable, the scheduler's
        tick fresh: 200, else 503 naming the check that failed (no token needed)."""
        checks = readiness()
        ok = all(check.ok for check in checks)
        response.status_code = 200 if ok else 503
        return Readiness(
            status="ready" if ok else "not ready",
            checks={c.name: CheckResult(ok=c.ok, detail=c.detail) for c in checks},
        )

    return app
