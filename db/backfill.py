"""Backfill: one run per past slot of a schedule in a range, through the slot key.

Each slot's run is inserted with `ON CONFLICT DO NOTHING` on `(schedule_id,
scheduled_for)`, so a slot that already has its execution (it ran, failed, was
skipped, or an earlier backfill made it) is counted as present and never run
twice: the same backfill twice makes nothing the second time. Runs are marked
`backfill`. The role check and the audit row of a backfill are the caller's
(`service.schedules.backfill`), who sends the runs after commit. Functions take a session
and never commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.access import Actor
from core.backfill import BackfillRange, backfill_slots, parse_range, slot_count
from core.settings import get_settings
from core.timing import Timing, parse_timing, spec_of
from core.vocabulary import ExecutionStatus, Permission, Trigger
from db.automations import live_automation
from db.executions import within_run_quota
from db.models import Automation, Execution, Schedule
from db.runs import RunMessage
from db.schedules import find_schedule
from db.session import db_now
from db.workspaces import authorize


@dataclass(frozen=True)
class BackfillPreview:
    """What a backfill of the range would do, before it is confirmed."""

    slots: int  # slots of the schedule in the range
    present: int  # of those, slots that already have their execution


@dataclass(frozen=True)
class Backfilled:
    created: list[RunMessage]  # the new runs, oldest slot first, to send after commit
    present: int  # slots skipped: they already had their execution
    span: BackfillRange  # the range, as checked

    @property
    def execution_ids(self) -> list[uuid.UUID]:
        return [m.execution_id for m in self.created]


def _target(
    session: Session,
    schedule_id: uuid.UUID,
    start: datetime | None,
    end: datetime | None,
    actor: Actor,
) -> tuple[Schedule, Automation, Timing, BackfillRange]:
    """The schedule (of a live automation in the actor's workspace), its automation, its
    timing and the checked range."""
    schedule = find_schedule(session, schedule_id, actor=actor)
    automation = live_automation(session, schedule.automation_id, actor=actor)
    span = parse_range(
        start, end, now=db_now(session), retention_days=get_settings().retention_days
    )
    return schedule, automation, parse_timing(spec_of(schedule)), span


def _present(session: Session, schedule_id: uuid.UUID, span: BackfillRange) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Execution)
            .where(
                Execution.schedule_id == schedule_id,
                Execution.trigger != Trigger.MANUAL,  # a run by hand takes no slot
                Execution.scheduled_for >= span.start,
                Execution.scheduled_for < span.end,
            )
        )
        or 0
    )


def preview_backfill(
    session: Session,
    schedule_id: uuid.UUID,
    start: datetime | None,
    end: datetime | None,
    *,
    actor: Actor,
) -> BackfillPreview:
    """How many slots the range holds and how many already have a run (ValidationFailed
    for a bad range); nothing is written."""
    authorize(session, actor, Permission.READ)
    schedule, _, timing, span = _target(session, schedule_id, start, end, actor)
    return BackfillPreview(slot_count(timing, span), _present(session, schedule.id, span))


def backfill(
    session: Session,
    schedule_id: uuid.UUID,
    start: datetime | None,
    end: datetime | None,
    *,
    actor: Actor,
) -> Backfilled:
    """One queued `backfill` run per slot of the schedule in `[start, end)` that has no
    execution yet, at most `MAX_BACKFILL_SLOTS` slots, within the workspace's runs-a-minute
    quota. Bad input, too many slots or a full quota raise and write nothing."""
    schedule, automation, timing, span = _target(session, schedule_id, start, end, actor)
    slots = backfill_slots(timing, span)
    now = db_now(session)
    made: list[tuple[uuid.UUID, datetime]] = []
    if slots:
        # Only the slots without a run would add runs; the slot key decides exactly below.
        adding = len(slots) - _present(session, schedule.id, span)
        if adding > 0:
            within_run_quota(session, actor.workspace_id, now, adding=adding)
        rows = [
            {
                "automation_id": automation.id,
                "workspace_id": actor.workspace_id,
                "schedule_id": schedule.id,
                "trigger": Trigger.BACKFILL,
                "scheduled_for": slot,
                "status": ExecutionStatus.QUEUED,
                "total_steps": len(automation.steps),
                "available_at": now,
                "input": schedule.input,  # a backfilled slot runs as the slot would have
            }
            for slot in slots
        ]
        stmt = (
            insert(Execution)
            .values(rows)
            .on_conflict_do_nothing(
                index_elements=["schedule_id", "scheduled_for"],
                index_where=Execution.trigger != Trigger.MANUAL,
            )
            .returning(Execution.id, Execution.scheduled_for)
        )
        made = sorted(((r.id, r.scheduled_for) for r in session.execute(stmt)), key=lambda r: r[1])
    messages = [
        RunMessage.start(i, max_retries=automation.max_retries, urgent=automation.urgent)
        for i, _ in made
    ]
    return Backfilled(messages, len(slots) - len(made), span)
