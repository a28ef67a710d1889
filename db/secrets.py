"""Workspace secrets: named values for agent request headers, sealed at rest.

Admins set and delete them (the role check and the audit row, which names the secret
only, are the caller's: `service.secrets`); nobody reads a value back (the dashboard
shows names only). The worker resolves an automation's header template at call time
with `resolve_headers`, for the run's workspace: the value is opened there and nowhere
else, and never stored with a run. Each secret is bound to the agent origins an admin
allows (`set_origins`): an automation naming it is saved only for one of them
(`unbound_secrets`), and a call elsewhere is refused (`resolve_headers`). Functions
take a session, scope every statement by the actor's workspace and never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.access import Actor
from core.errors import NotFound, ValidationFailed
from core.limits import MAX_SECRET_NAME, MAX_SECRET_VALUE
from core.secrets import (
    SECRET_NAME,
    SecretNotBound,
    not_bound_message,
    parse_origins,
    render_headers,
    secret_names,
    unbound,
)
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
    """What anyone may know of a secret: its name, when it was last set, and where it may
    be sent."""

    name: str
    updated_at: datetime
    origins: tuple[str, ...] = ()


def list_secrets(session: Session, *, actor: Actor) -> list[SecretInfo]:
    """The workspace's secret names (never their values), by name."""
    authorize(session, actor, Permission.READ)
    rows = session.execute(
        select(WorkspaceSecret.name, WorkspaceSecret.updated_at, WorkspaceSecret.origins)
        .where(WorkspaceSecret.workspace_id == actor.workspace_id)
        .order_by(WorkspaceSecret.name)
    ).all()
    return [SecretInfo(r.name, r.updated_at, tuple(r.origins)) for r in rows]


@dataclass(frozen=True)
class SavedSecret:
    """Which secret was set (its name as stored), and whether it replaced one."""

    name: str
    replaced: bool


def set_secret(
    session: Session,
    name: str,
    value: str,
    *,
    actor: Actor,
    origins: Sequence[str] | None = None,
) -> SavedSecret:
    """Create or replace a secret of the actor's workspace, its value sealed, bound to
    `origins` (checked: `core.secrets.parse_origins`); None keeps a replaced secret's (a
    new one is then bound to none)."""
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
    bound = None if origins is None else list(parse_origins(origins))
    changes: dict[str, Any] = {"sealed": sealed, "updated_at": func.now()}
    if bound is not None:
        changes["origins"] = bound
    session.execute(
        insert(WorkspaceSecret)
        .values(workspace_id=actor.workspace_id, name=name, sealed=sealed, origins=bound or [])
        .on_conflict_do_update(index_elements=["workspace_id", "name"], set_=changes)
    )
    return SavedSecret(name, replaced=existed is not None)


def set_origins(
    session: Session, name: str, origins: Sequence[str], *, actor: Actor
) -> tuple[list[str], list[str]]:
    """Bind a secret of the actor's workspace to `origins` (checked); (old, new)."""
    bound = list(parse_origins(origins))
    old = session.scalar(
        select(WorkspaceSecret.origins)
        .where(WorkspaceSecret.workspace_id == actor.workspace_id, WorkspaceSecret.name == name)
        .with_for_update()
    )
    if old is None:
        raise NotFound(f"no secret named {name} in this workspace")
    session.execute(
        update(WorkspaceSecret)
        .where(WorkspaceSecret.workspace_id == actor.workspace_id, WorkspaceSecret.name == name)
        .values(origins=bound)
    )
    return list(old), bound


def unbound_secrets(
    session: Session, workspace_id: uuid.UUID, headers: Mapping[str, str], url: str
) -> list[str]:
    """The workspace's secrets `headers` name that may not be sent to `url` (a name the
    workspace has no secret of fails at call time instead, naming it)."""
    names = secret_names(headers)
    if not names:
        return []
    rows = session.execute(
        select(WorkspaceSecret.name, WorkspaceSecret.origins).where(
            WorkspaceSecret.workspace_id == workspace_id, WorkspaceSecret.name.in_(names)
        )
    ).all()
    return unbound({r.name: r.origins for r in rows}, url)


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
    session: Session, workspace_id: uuid.UUID, headers_template: Mapping[str, str], url: str
) -> dict[str, str]:
    """`resolve_call_headers`'s headers."""
    return resolve_call_headers(session, workspace_id, headers_template, url)[0]


def resolve_call_headers(
    session: Session, workspace_id: uuid.UUID, headers_template: Mapping[str, str], url: str
) -> tuple[dict[str, str], list[str]]:
    """The headers to send to `url`, `{{ secret.NAME }}` replaced by the workspace's
    secret values, and those values (to redact from what the call stores).

    For the worker, acting for the run's workspace: another workspace's secret of the
    same name is never used. A missing secret raises SecretUnreadable naming it, one not
    bound to `url`'s origin SecretNotBound (nothing is opened).
    """
    names = secret_names(headers_template)
    if not names:
        return dict(headers_template), []
    rows = session.execute(
        select(WorkspaceSecret.name, WorkspaceSecret.sealed, WorkspaceSecret.origins).where(
            WorkspaceSecret.workspace_id == workspace_id, WorkspaceSecret.name.in_(names)
        )
    ).all()
    if refused := unbound({r.name: r.origins for r in rows}, url):
        raise SecretNotBound(not_bound_message(refused, url))
    box = get_settings().secret_box()
    values = {r.name: box.open(r.sealed) for r in rows}
    return render_headers(headers_template, values), list(values.values())
