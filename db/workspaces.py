"""Workspaces and their members: who may act where, checked on every call.

`authorize` is the one gate: every `db` read calls it first with the acting person,
and every write's unit of work (`service.unit`) before anything is written; it reads
that person's role from the membership row in the same transaction. A viewer's
forged write, an Actor naming a workspace its person is not in, or one kept after the
person was removed raises Forbidden before anything is written. `audit` records a
write in the same transaction. Functions take a session and never commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.access import (
    DEFAULT_WORKSPACE_ID,
    DEFAULT_WORKSPACE_NAME,
    LOCAL_ADMIN,
    WEBHOOK_PERMISSIONS,
    Actor,
    Login,
    require,
    subject_of,
)
from core.errors import Forbidden, InvalidState, NotFound, ValidationFailed
from core.limits import (
    DEFAULT_MAX_AUTOMATIONS,
    DEFAULT_MAX_RUNS_PER_MINUTE,
    DEFAULT_MAX_SCHEDULES,
    MAX_NAME,
    MAX_OWNER,
)
from core.vocabulary import AuditAction, AuditTarget, Permission, Role
from db.models import ApiToken, AuditLog, Automation, Membership, Webhook, Workspace


def authorize(session: Session, actor: Actor, permission: Permission) -> Role:
    """The actor's role in its workspace, read now; Forbidden unless it allows `permission`.

    A person's role comes from their membership row, an API token's from its own
    row, which must not be revoked; an inbound webhook may only read and start runs,
    while its webhook exists and its automation is live.
    """
    if actor.webhook_id is not None:
        return _webhook_role(session, actor, permission)
    if actor.token_id is not None:
        role = session.scalar(
            select(ApiToken.role).where(
                ApiToken.id == actor.token_id,
                ApiToken.workspace_id == actor.workspace_id,
                ApiToken.revoked_at.is_(None),
                or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > func.now()),
            )
        )
    else:
        role = session.scalar(
            select(Membership.role).where(
                Membership.workspace_id == actor.workspace_id, Membership.subject == actor.subject
            )
        )
    if role is None:
        raise Forbidden(f"{actor.name} is not a member of this workspace")
    require(role, permission)
    return Role(role)


def _webhook_role(session: Session, actor: Actor, permission: Permission) -> Role:
    live = session.scalar(
        select(Webhook.id)
        .join(Automation, Automation.id == Webhook.automation_id)
        .where(
            Webhook.id == actor.webhook_id,
            Webhook.workspace_id == actor.workspace_id,
            Automation.archived_at.is_(None),
        )
    )
    if live is None:
        raise Forbidden("this webhook was disabled, or its automation deleted")
    if permission not in WEBHOOK_PERMISSIONS:
        raise Forbidden("a webhook may only start runs")
    return Role.EDITOR  # the role whose permissions it has a part of


def audit(
    session: Session,
    actor: Actor,
    action: AuditAction,
    target_type: AuditTarget,
    target_id: uuid.UUID,
    **details: Any,
) -> None:
    """Record what `actor` did, in its workspace, in the caller's transaction."""
    session.add(
        AuditLog(
            workspace_id=actor.workspace_id,
            actor=actor.name,
            action=action,
            target_type=target_type,
            target_id=target_id,
            details=details,
        )
    )


# --- who is who -------------------------------------------------------------------


def ensure_default_workspace(session: Session) -> uuid.UUID:
    """The default workspace, created on first use."""
    session.execute(
        insert(Workspace)
        .values(id=DEFAULT_WORKSPACE_ID, name=DEFAULT_WORKSPACE_NAME)
        .on_conflict_do_nothing(index_elements=["id"])
    )
    return DEFAULT_WORKSPACE_ID


def bootstrap_admins(session: Session, names: set[str] | frozenset[str]) -> None:
    """Make each of `names` (STEPWISE_ADMINS, or the local admin) an admin of the default
    workspace: the configuration is the authority, so a demoted one is promoted again."""
    ensure_default_workspace(session)
    for name in names:
        session.execute(
            insert(Membership)
            .values(workspace_id=DEFAULT_WORKSPACE_ID, subject=subject_of(name), role=Role.ADMIN)
            .on_conflict_do_update(
                index_elements=["workspace_id", "subject"], set_={"role": Role.ADMIN}
            )
        )


def drop_local_admin(session: Session) -> None:
    """With login configured there is no local admin: its memberships go."""
    session.execute(delete(Membership).where(Membership.subject == subject_of(LOCAL_ADMIN)))


def sign_in(session: Session, login: Login) -> str | None:
    """The member a provider identity acts as, or None: who accepted an invitation before,
    else whose verified e-mail an invitation names (which this binds to the identity, unless
    another identity holds that member already). Invitations made since for the same member
    are bound too: from the first login on, only this identity is that member."""
    name = _bound_member(session, login)
    if name is None and login.email is not None:
        held = session.scalar(
            select(Membership.subject)
            .where(Membership.subject == login.email, Membership.login_issuer.is_not(None))
            .limit(1)
        )
        name = None if held is not None else login.email
    if name is None:
        return None
    session.execute(
        update(Membership)
        .where(Membership.subject == name, Membership.login_issuer.is_(None))
        .values(login_issuer=login.issuer, login_subject=login.subject)
    )
    return _bound_member(session, login)


def _bound_member(session: Session, login: Login) -> str | None:
    if not login.subject:
        return None
    return session.scalar(
        select(Membership.subject)
        .where(Membership.login_issuer == login.issuer, Membership.login_subject == login.subject)
        .order_by(Membership.created_at)
        .limit(1)
    )


@dataclass(frozen=True)
class Place:
    """A workspace a person belongs to, with their role there."""

    workspace_id: uuid.UUID
    name: str
    role: Role

    def actor(self, name: str) -> Actor:
        return Actor(name=name, workspace_id=self.workspace_id, role=self.role)


def places(session: Session, name: str) -> list[Place]:
    """Every workspace `name` is a member of, by workspace name (the default first)."""
    rows = session.execute(
        select(Workspace.id, Workspace.name, Membership.role)
        .join(Membership, Membership.workspace_id == Workspace.id)
        .where(Membership.subject == subject_of(name))
        .order_by(Workspace.id != DEFAULT_WORKSPACE_ID, Workspace.name, Workspace.id)
    ).all()
    return [Place(r.id, r.name, Role(r.role)) for r in rows]


def acting_as(session: Session, name: str, workspace_id: uuid.UUID | None = None) -> Actor | None:
    """`name` acting in `workspace_id` (or their first workspace); None if not a member."""
    mine = places(session, name)
    chosen = next((p for p in mine if p.workspace_id == workspace_id), mine[0] if mine else None)
    return None if chosen is None else chosen.actor(name)


# --- workspaces and members (admins) -------------------------------------------------


def create_workspace(session: Session, name: str, *, actor: Actor) -> Place:
    """A new workspace whose first admin is the acting person; returns it, as their place."""
    name = _checked_name(name)
    workspace = Workspace(name=name)
    session.add(workspace)
    session.flush()
    session.add(Membership(workspace_id=workspace.id, subject=actor.subject, role=Role.ADMIN))
    return Place(workspace.id, name, Role.ADMIN)


def _checked_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise ValidationFailed.single("name", f"give a name of 1 to {MAX_NAME} characters")
    return name


@dataclass(frozen=True)
class Member:
    subject: str
    role: Role


@dataclass(frozen=True)
class RoleChange:
    """A member's role before (None: they were not in) and after a change."""

    subject: str
    old: Role | None
    new: Role


def list_members(session: Session, *, actor: Actor) -> list[Member]:
    """The acting workspace's members, by e-mail (any member may see who else is in)."""
    authorize(session, actor, Permission.READ)
    rows = session.execute(
        select(Membership.subject, Membership.role)
        .where(Membership.workspace_id == actor.workspace_id)
        .order_by(Membership.subject)
    ).all()
    return [Member(r.subject, Role(r.role)) for r in rows]


def set_member(
    session: Session, subject: str, role: Role | str, *, actor: Actor
) -> RoleChange | None:
    """Add `subject` to the acting workspace with `role`, or change their role; None when
    they had it already (nothing written)."""
    subject = subject_of(subject)
    if not subject or len(subject) > MAX_OWNER or any(c.isspace() for c in subject):
        raise ValidationFailed.single("member", "give the person's e-mail address")
    try:
        role = Role(role)
    except ValueError:
        raise ValidationFailed.single("role", "use viewer, editor or admin") from None
    old = _role_of(session, actor.workspace_id, subject, lock=True)
    if old == role:
        return None
    if old == Role.ADMIN:
        _keep_an_admin(session, actor.workspace_id, subject)
    session.execute(
        insert(Membership)
        .values(workspace_id=actor.workspace_id, subject=subject, role=role)
        .on_conflict_do_update(index_elements=["workspace_id", "subject"], set_={"role": role})
    )
    return RoleChange(subject, old, role)


def remove_member(session: Session, subject: str, *, actor: Actor) -> Member:
    """Take `subject` out of the acting workspace, returning who left with which role; the
    last admin stays."""
    subject = subject_of(subject)
    old = _role_of(session, actor.workspace_id, subject, lock=True)
    if old is None:
        raise NotFound(f"{subject} is not a member of this workspace")
    if old == Role.ADMIN:
        _keep_an_admin(session, actor.workspace_id, subject)
    session.execute(
        delete(Membership).where(
            Membership.workspace_id == actor.workspace_id, Membership.subject == subject
        )
    )
    return Member(subject, old)


def _role_of(session: Session, workspace_id: uuid.UUID, subject: str, *, lock: bool) -> Role | None:
    stmt = select(Membership.role).where(
        Membership.workspace_id == workspace_id, Membership.subject == subject
    )
    role = session.scalar(stmt.with_for_update() if lock else stmt)
    return None if role is None else Role(role)


def _keep_an_admin(session: Session, workspace_id: uuid.UUID, leaving: str) -> None:
    others = session.scalar(
        select(func.count())
        .select_from(Membership)
        .where(
            Membership.workspace_id == workspace_id,
            Membership.role == Role.ADMIN,
            Membership.subject != leaving,
        )
    )
    if not others:
        raise InvalidState("a workspace keeps at least one admin: make someone else admin first")


# --- quotas -------------------------------------------------------------------------


@dataclass(frozen=True)
class Quotas:
    max_automations: int
    max_schedules: int
    max_runs_per_minute: int


def quotas(session: Session, workspace_id: uuid.UUID) -> Quotas:
    """The workspace's limits, its own where set, else the deployment's defaults."""
    row = session.execute(
        select(
            Workspace.max_automations, Workspace.max_schedules, Workspace.max_runs_per_minute
        ).where(Workspace.id == workspace_id)
    ).one()
    return Quotas(
        max_automations=_or(row.max_automations, DEFAULT_MAX_AUTOMATIONS),
        max_schedules=_or(row.max_schedules, DEFAULT_MAX_SCHEDULES),
        max_runs_per_minute=_or(row.max_runs_per_minute, DEFAULT_MAX_RUNS_PER_MINUTE),
    )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def set_quotas(session: Session, limits: Quotas, *, actor: Actor) -> dict[str, list[int]]:
    """Set the acting workspace's limits; returns what changed, old and new."""
    new = {
        "max_automations": limits.max_automations,
        "max_schedules": limits.max_schedules,
        "max_runs_per_minute": limits.max_runs_per_minute,
    }
    for name, value in new.items():
        if value < 0:
            raise ValidationFailed.single(name, "must be 0 or more")
    workspace = session.get(Workspace, actor.workspace_id, with_for_update=True)
    assert workspace is not None
    old = quotas(session, actor.workspace_id)
    changed = {k: [getattr(old, k), v] for k, v in new.items() if getattr(old, k) != v}
    for name, value in new.items():
        setattr(workspace, name, value)
    return changed


def workspace_quotas(session: Session, *, actor: Actor) -> Quotas:
    """The acting workspace's limits, for any member to read."""
    authorize(session, actor, Permission.READ)
    return quotas(session, actor.workspace_id)
