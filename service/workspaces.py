"""Workspaces, their members and quotas: admins change them, each change audited; and who
a person is, where.
"""

from __future__ import annotations

from core.access import Actor, Login
from core.vocabulary import AuditAction, AuditTarget, Permission, Role
from db import workspaces
from db.session import session_scope
from db.workspaces import Place, Quotas
from service.unit import unit_of_work


def places(name: str, *, admins: set[str] | frozenset[str] | None = None) -> list[Place]:
    """Every workspace `name` is a member of; with `admins` (the configuration's:
    STEPWISE_ADMINS, or the local admin), each is first made an admin of the default
    workspace, which is created on first use."""
    with session_scope() as session:
        if admins is not None:
            workspaces.bootstrap_admins(session, admins)
        return workspaces.places(session, name)


def sign_in(login: Login, *, admins: set[str] | frozenset[str] | None = None) -> str | None:
    """The member a provider identity acts as (`db.workspaces.sign_in`), or None. With
    `admins` (STEPWISE_ADMINS), each is first made an admin of the default workspace; with
    login there is no local admin, so its memberships are dropped."""
    with session_scope() as session:
        if admins is not None:
            workspaces.bootstrap_admins(session, admins)
            workspaces.drop_local_admin(session)
        return workspaces.sign_in(session, login)


def create_workspace(name: str, *, actor: Actor) -> Actor:
    """A new workspace whose first admin is the acting admin; returns them acting in it."""
    with unit_of_work(actor, Permission.MANAGE_MEMBERS) as unit:
        place = workspaces.create_workspace(unit.session, name, actor=actor)
        there = place.actor(actor.name)
        # Recorded in the new workspace's log: it is what the audit there starts with.
        workspaces.audit(
            unit.session,
            there,
            AuditAction.CREATE_WORKSPACE,
            AuditTarget.WORKSPACE,
            place.workspace_id,
            name=place.name,
        )
    return there


def set_member(subject: str, role: Role | str, *, actor: Actor) -> None:
    """Add `subject` to the acting workspace with `role`, or change their role (admins
    only; audited when anything changed)."""
    with unit_of_work(actor, Permission.MANAGE_MEMBERS) as unit:
        change = workspaces.set_member(unit.session, subject, role, actor=actor)
        if change is None:
            return
        details: dict[str, object] = {"member": change.subject, "role": str(change.new)}
        if change.old is not None:
            details["changed"] = {"role": [str(change.old), str(change.new)]}
        action = AuditAction.ADD_MEMBER if change.old is None else AuditAction.SET_ROLE
        unit.audit(action, AuditTarget.WORKSPACE, actor.workspace_id, **details)


def remove_member(subject: str, *, actor: Actor) -> None:
    """Take `subject` out of the acting workspace (admins only; audited); the last admin stays."""
    with unit_of_work(actor, Permission.MANAGE_MEMBERS) as unit:
        gone = workspaces.remove_member(unit.session, subject, actor=actor)
        unit.audit(
            AuditAction.REMOVE_MEMBER,
            AuditTarget.WORKSPACE,
            actor.workspace_id,
            member=gone.subject,
            role=str(gone.role),
        )


def set_quotas(limits: Quotas, *, actor: Actor) -> None:
    """Set the acting workspace's limits (audited, old and new)."""
    with unit_of_work(actor, Permission.MANAGE_QUOTAS) as unit:
        changed = workspaces.set_quotas(unit.session, limits, actor=actor)
        unit.audit(
            AuditAction.SET_QUOTA, AuditTarget.WORKSPACE, actor.workspace_id, changed=changed
        )
