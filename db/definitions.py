"""The reads behind definitions as code (`stepwise apply`, `stepwise export-defs`) and the
demo's first start: a workspace's automations, their schedules, its channels' names.

They return rows to compare with a definitions file, scoped by the acting person's
workspace; the caller's unit of work checked the role. Functions take a session and
never commit.
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.access import Actor
from core.vocabulary import CompletedReason
from db.models import Automation, NotificationChannel, Schedule


def live_automations(session: Session, *, actor: Actor) -> list[Automation]:
    """The workspace's automations not archived, by name."""
    return list(
        session.scalars(
            select(Automation)
            .where(Automation.workspace_id == actor.workspace_id, Automation.archived_at.is_(None))
            .order_by(Automation.name)
        )
    )


def schedules_of(session: Session, automation_id: uuid.UUID) -> list[Schedule]:
    """The schedules of a live automation (`live_automations` found it), in no order."""
    return list(
        session.scalars(
            select(Schedule)
            .where(Schedule.automation_id == automation_id)
            .where(Schedule.completed_reason.is_distinct_from(CompletedReason.AUTOMATION_DELETED))
        )
    )


def channel_names(session: Session, *, actor: Actor) -> dict[uuid.UUID, str]:
    """The workspace's notification channels' names, by id."""
    rows = session.execute(
        select(NotificationChannel.id, NotificationChannel.name).where(
            NotificationChannel.workspace_id == actor.workspace_id
        )
    )
    return {row.id: row.name for row in rows}


def any_automation(session: Session) -> bool:
    """Whether the deployment holds any automation at all, archived or not, in any workspace."""
    return bool(session.scalar(select(func.count()).select_from(Automation)))
