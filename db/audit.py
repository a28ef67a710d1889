"""Reading the audit log: who did what to which automation, schedule or execution, when.

Rows are written in the same transaction as the change they record (`service.unit.Unit.audit`);
this module only reads them, newest first, narrowed by who / what / when
(`service.exports.audit_csv` writes them as a file).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.access import Actor
from core.vocabulary import AuditTarget, Permission
from db.models import AuditLog, Automation, Execution, Schedule
from db.workspaces import authorize


@dataclass(frozen=True)
class AuditFilters:
    """What the audit list is narrowed to; empty means "all"."""

    actor: str = ""  # a part of the actor's name, any case
    actions: tuple[str, ...] = ()
    target_types: tuple[str, ...] = ()
    target_id: uuid.UUID | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


@dataclass(frozen=True)
class AuditRow:
    at: datetime
    actor: str
    action: str
    target_type: str
    target_id: uuid.UUID
    details: dict[str, Any]


def list_audit(
    session: Session, filters: AuditFilters, *, actor: Actor, limit: int = 200
) -> list[AuditRow]:
    """The newest `limit` audit rows of the actor's workspace matching `filters`."""
    authorize(session, actor, Permission.READ)
    stmt = select(
        AuditLog.at,
        AuditLog.actor,
        AuditLog.action,
        AuditLog.target_type,
        AuditLog.target_id,
        AuditLog.details,
    ).where(AuditLog.workspace_id == actor.workspace_id)
    if filters.actor.strip():
        stmt = stmt.where(AuditLog.actor.icontains(filters.actor.strip(), autoescape=True))
    if filters.actions:
        stmt = stmt.where(AuditLog.action.in_(filters.actions))
    if filters.target_types:
        stmt = stmt.where(AuditLog.target_type.in_(filters.target_types))
    if filters.target_id is not None:
        stmt = stmt.where(AuditLog.target_id == filters.target_id)
    if filters.since is not None:
        stmt = stmt.where(AuditLog.at >= filters.since)
    if filters.until is not None:
        stmt = stmt.where(AuditLog.at < filters.until)
    rows = session.execute(stmt.order_by(AuditLog.at.desc(), AuditLog.id.desc()).limit(limit))
    return [AuditRow(**row._mapping) for row in rows]


def target_names(session: Session, rows: list[AuditRow], *, actor: Actor) -> dict[uuid.UUID, str]:
    """What each row's automation, schedule or execution is called, by id (three reads, in
    the actor's workspace): an automation by its name, a schedule and an execution by their
    automation's, with the schedule's timing or the run's time. A deleted one is missing."""
    authorize(session, actor, Permission.READ)
    workspace_id = actor.workspace_id
    wanted: dict[str, set[uuid.UUID]] = {}
    for row in rows:
        wanted.setdefault(row.target_type, set()).add(row.target_id)
    names: dict[uuid.UUID, str] = {}
    if ids := wanted.get(AuditTarget.AUTOMATION):
        found = session.execute(
            select(Automation.id, Automation.name).where(
                Automation.id.in_(ids), Automation.workspace_id == workspace_id
            )
        )
        names |= {i: name for i, name in found}
    if ids := wanted.get(AuditTarget.SCHEDULE):
        timed = session.execute(
            select(Schedule.id, Automation.name, Schedule.kind, Schedule.cron_expr)
            .join(Automation, Automation.id == Schedule.automation_id)
            .where(Schedule.id.in_(ids), Schedule.workspace_id == workspace_id)
        )
        names |= {i: f"{name} · {cron or kind}" for i, name, kind, cron in timed}
    if ids := wanted.get(AuditTarget.EXECUTION):
        runs = session.execute(
            select(Execution.id, Automation.name, Execution.scheduled_for)
            .join(Automation, Automation.id == Execution.automation_id)
            .where(Execution.id.in_(ids), Execution.workspace_id == workspace_id)
        )
        names |= {i: f"{name} · run of {at:%Y-%m-%d %H:%M} UTC" for i, name, at in runs}
    return names
