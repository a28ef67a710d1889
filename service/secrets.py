"""Workspace secrets: admins set, bind and delete them, each change audited by name, never value."""

from __future__ import annotations

from collections.abc import Sequence

from core.access import Actor
from core.secrets import parse_origins
from core.vocabulary import AuditAction, AuditTarget, Permission
from db import secrets
from db.secrets import secret_id
from service.unit import unit_of_work


def set_secret(
    name: str, value: str, *, actor: Actor, origins: Sequence[str] | None = None
) -> None:
    """Create or replace a secret (admins only), bound to the agent `origins` it may be
    sent to (None: a replaced secret keeps its own, a new one goes nowhere until bound);
    audited by name and origins, never by value."""
    with unit_of_work(actor, Permission.MANAGE_SECRETS) as unit:
        saved = secrets.set_secret(unit.session, name, value, actor=actor, origins=origins)
        details = {} if origins is None else {"origins": sorted(parse_origins(origins))}
        unit.audit(
            AuditAction.SET_SECRET,
            AuditTarget.SECRET,
            secret_id(actor.workspace_id, saved.name),
            name=saved.name,
            replaced=saved.replaced,
            **details,
        )


def set_secret_origins(name: str, origins: Sequence[str], *, actor: Actor) -> None:
    """Bind a secret to the agent origins it may be sent to (admins only; audited, old and
    new). Automations naming it are then saved and called only for those origins."""
    with unit_of_work(actor, Permission.MANAGE_SECRETS) as unit:
        old, new = secrets.set_origins(unit.session, name, origins, actor=actor)
        unit.audit(
            AuditAction.SET_SECRET,
            AuditTarget.SECRET,
            secret_id(actor.workspace_id, name),
            name=name,
            changed={"origins": [old, new]},
        )


def delete_secret(name: str, *, actor: Actor) -> None:
    """Delete a secret (admins only); audited by name."""
    with unit_of_work(actor, Permission.MANAGE_SECRETS) as unit:
        secrets.delete_secret(unit.session, name, actor=actor)
        unit.audit(
            AuditAction.DELETE_SECRET,
            AuditTarget.SECRET,
            secret_id(actor.workspace_id, name),
            name=name,
        )
