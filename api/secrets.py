"""/v1/secrets: a workspace's secrets by name and the agent origins each may be sent to.

The same `service.secrets` functions and `db` reads as the dashboard's Workspace page:
any member lists names and origins (never a value); only admins bind a secret to
origins, audited with the old and new list. Values are set on the Workspace page.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Acting
from api.problems import documented
from api.schemas import Input
from core.errors import NotFound
from db.secrets import SecretInfo, list_secrets
from service import secrets
from service.unit import read

router = APIRouter(tags=["secrets"], responses=documented(400, 401, 403, 404, 422))


class OriginsIn(Input):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"origins": ["https://agent.example.com"]}]}
    )

    origins: list[str] = Field(
        max_length=100,
        description="the agent origins (scheme, host, port; a path is ignored) it may go to",
    )


class SecretOut(BaseModel):
    name: str
    updated_at: datetime
    origins: list[str] = Field(description="where it may be sent, as scheme://host:port")


def _secret(info: SecretInfo) -> SecretOut:
    return SecretOut(name=info.name, updated_at=info.updated_at, origins=list(info.origins))


@router.get("/v1/secrets")
def list_workspace_secrets(actor: Acting) -> list[SecretOut]:
    """The workspace's secrets by name, with the origins each may be sent to (no value)."""
    return [_secret(s) for s in read(list_secrets, actor=actor)]


@router.put("/v1/secrets/{name}/origins")
def bind_secret(name: str, body: OriginsIn, actor: Acting) -> SecretOut:
    """Bind a secret to the agent origins it may be sent to (admins only, audited).

    An automation naming it is then saved, and called, only for one of them."""
    secrets.set_secret_origins(name, body.origins, actor=actor)
    found = [s for s in read(list_secrets, actor=actor) if s.name == name]
    if not found:  # deleted meanwhile
        raise NotFound(f"no secret named {name} in this workspace")
    return _secret(found[0])
