"""API tokens: admins make and revoke them (audited by name); a call's token is checked here.

A token is shown once, when made; only its hash is stored (`db.tokens`).
"""

from __future__ import annotations

import uuid

from core.access import Actor
from core.vocabulary import AuditAction, AuditTarget, Permission, Role
from db import tokens
from db.session import session_scope
from db.tokens import NewToken
from service.unit import unit_of_work


def create_token(
    name: str, role: Role | str, *, actor: Actor, expires_in_days: int | None = None
) -> NewToken:
    """A new token for the acting workspace with `role`, live until revoked or for
    `expires_in_days` (admins only; audited by name)."""
    with unit_of_work(actor, Permission.MANAGE_TOKENS) as unit:
        made = tokens.create_token(
            unit.session, name, role, actor=actor, expires_in_days=expires_in_days
        )
        info = made.info
        unit.audit(
            AuditAction.CREATE_TOKEN,
            AuditTarget.TOKEN,
            info.id,
            name=info.name,
            role=info.role,
            expires_in_days=expires_in_days,
        )
    return made


def revoke_token(token_id: uuid.UUID, *, actor: Actor) -> None:
    """Revoke a token of the acting workspace (admins only; audited): its next call is refused."""
    with unit_of_work(actor, Permission.MANAGE_TOKENS) as unit:
        name = tokens.revoke_token(unit.session, token_id, actor=actor)
        unit.audit(AuditAction.REVOKE_TOKEN, AuditTarget.TOKEN, token_id, name=name)


def authenticate(token: str) -> Actor | None:
    """The actor a presented token stands for, or None if it is unknown, revoked or expired; its
    last use is recorded (to the minute), in its own transaction."""
    with session_scope() as session:
        return tokens.authenticate(session, token)
