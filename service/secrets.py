"""Workspace secrets: admins set and delete them, each change audited by name, never value."""

from __future__ import annotations

from core.access import Actor
from core.vocabulary import AuditAction, AuditTarget, Permission
from db import secrets
from db.secrets import secret_id
from service.unit import unit_of_work


def set_secret(name: str, value: str, *, actor: Actor) -> None:
    """Create or replace a secret (admins only); audited by name, never by value."""
    with unit_of_work(actor, Permission.MANAGE_SECRETS) as unit:
        saved = secrets.set_secret(unit.session, name, value, actor=actor)
        unit.audit(
            AuditAction.SET_SECRET,
            AuditTarget.SECRET,
            secret_id(actor.workspace_id, saved.name),
            name=saved.name,
            replaced=saved.replaced,
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
