"""The REST API as an ASGI app: the routers, problem+json errors, health and docs."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from api import audit, automations, executions, hooks, queues, schedules
from api.problems import install

DESCRIPTION = """\
Schedules multi-step HTTP automations, as the dashboard does, for scripts.

Every call but `/health` and the docs needs an API token (`Authorization: Bearer
<token>`), made by a workspace admin on the dashboard's Workspace page: it acts in
that workspace, with that role. Errors are `application/problem+json` (RFC 9457);
refused input lists each field with the message the dashboard shows.

`POST /v1/hooks/{id}` (an automation's webhook) needs no token: the webhook's secret
or a signature of the body proves the call.
"""


class Health(BaseModel):
    status: str


def create_app() -> FastAPI:
    app = FastAPI(title="Stepwise", version="1", description=DESCRIPTION)
    install(app)
    for module in (automations, schedules, executions, queues, audit, hooks):
        app.include_router(module.router)

    @app.get("/health", tags=["health"])
    def health() -> Health:
        """The process is up (no token needed; it reads nothing)."""
        return Health(status="ok")

    return app
