"""Workspace secrets: named values for agent request headers, sealed at rest.

Admins set and delete them (the role check and the audit row, which names the secret
only, are the caller's: `service.secrets`); nobody reads a value back (the dashboard
shows names only). The worker resolves an automation's header template at call time
with `resolve_headers`, for the run's workspace: the value is opened there and nowhere
else, and never stored with a run. Functions take a session, scope every statement by
the actor's workspace and never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.access import Actor
from core.errors import NotFound, ValidationFailed
from core.limits import MAX_SECRET_NAME, MAX_SECRET_VALUE
from core.secrets import SECRET_NAME, render_headers, secret_names
from core.settings import get_settings
from core.vocabulary import Permission
from db.models import WorkspaceSecret
from db.workspaces import authorize

# Audit rows point at a secret by a stable id made from its workspace and name.
_SECRET_IDS = uuid.UUID("6c1f1d0e-3b0c-4a57-9d25-2f6f8b1b7a11")


def secret_id(workspace_id: uuid.UUID, name: str) -> uuid.UUID:
    return uuid.uuid5(_SECRET_IDS, f"{workspace_id}/{name}")


@dataclass(frozen=True)
class SecretInfo:
    """What anyone may know of a secret: its name and when it was last set."""

    name: str
    updated_at: datetime


def list_secrets(session: Session, *, actor: Actor) -> list[SecretInfo]:
    """The workspace's secret names (never their values), by name."""
    authorize(session, actor, Permission.READ)
    rows = session.execute(
        select(WorkspaceSecret.name, WorkspaceSecret.updated_at)
        .where(WorkspaceSecret.workspace_id == actor.workspace_id)
        .order_by(WorkspaceSecret.name)
    ).all()
    return [SecretInfo(r.name, r.updated_at) for r in rows]


@dataclass(frozen=True)
class SavedSecret:
    """Which secret was set (its name as stored), and whether it replaced one."""

    name: str
    replaced: bool


def set_secret(session: Session, name: str, value: str, *, actor: Actor) -> SavedSecret:
    """Create or replace a secret of the actor's workspace, its value sealed."""
    name = name.strip()
    if not SECRET_NAME.match(name) or len(name) > MAX_SECRET_NAME:
        raise ValidationFailed.single(
            "name", f"use letters, digits and _ (not first), at most {MAX_SECRET_NAME}"
        )
    if not value or len(value) > MAX_SECRET_VALUE:
        raise ValidationFailed.single("value", f"give 1 to {MAX_SECRET_VALUE} characters")
    if any(c in value for c in "\r\n\x00"):
        # It is sent as (part of) a header value, where a line break would end the header.
        raise ValidationFailed.single("value", "must be on one line (no line break)")
    sealed = get_settings().secret_box().seal(value)
    existed = session.scalar(
        select(WorkspaceSecret.name).where(
            WorkspaceSecret.workspace_id == actor.workspace_id, WorkspaceSecret.name == name
        )
    )
    session.execute(
        insert(WorkspaceSecret)
        .values(workspace_id=actor.workspace_id, name=name, sealed=sealed)
        .on_conflict_do_update(
            index_elements=["workspace_id", "name"],
            set_={"sealed": sealed, "updated_at": func.now()},
        )
    )
    return SavedSecret(name, replaced=existed is not None)


def delete_secret(session: Session, name: str, *, actor: Actor) -> None:
    """Delete a secret of the actor's workspace (NotFound if it has none of that name)."""
    gone = session.execute(
        delete(WorkspaceSecret)
        .where(WorkspaceSecret.workspace_id == actor.workspace_id, WorkspaceSecret.name == name)
        .returning(WorkspaceSecret.name)
    ).first()
    if gone is None:
        raise NotFound(f"no secret named {name} in this workspace")


def resolve_headers(
    session: Session, workspace_id: uuid.UUID, headers_template: Mapping[str, str]
) -> dict[str, str]:
    """The headers to send, `{{ secret.NAME }}` replaced by the workspace's secret values.

    For the worker, acting for the run's workspace: another workspace's secret of the
    same name is never used. A missing secret raises SecretUnreadable naming it.
    """
    names = secret_names(headers_template)
    if not names:
        return dict(headers_template)
    rows = session.execute(
        select(WorkspaceSecret.name, WorkspaceSecret.sealed).where(
            WorkspaceSecret.workspace_id == workspace_id, WorkspaceSecret.name.in_(names)
        )
    ).all()
    box = get_settings().secret_box()
    return render_headers(headers_template, {r.name: box.open(r.sealed) for r in rows})
