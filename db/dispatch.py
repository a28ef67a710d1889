"""Turning due schedules into executions, one batch per transaction.

Due schedules are claimed with `FOR UPDATE SKIP LOCKED`, so schedulers running
side by side share the work instead of doubling it; the slot key
`(schedule_id, scheduled_for)` with `ON CONFLICT DO NOTHING` makes a duplicate
execution impossible even if two of them computed the same slot.
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.limits import MAX_REASON
from core.schedule import DispatchPlan, plan_dispatch
from core.timing import parse_timing, spec_of
from core.vocabulary import ExecutionStatus, MisfirePolicy, Trigger
from db.models import Automation, Execution, Heartbeat, Schedule
from db.runs import RunMessage

log = logging.getLogger("stepwise.dispatch")
MISSED_ERROR = "missed: nothing dispatched at this time (misfire policy {policy})"


@dataclass(frozen=True)
class DispatchConfig:
    horizon_s: int
    grace_s: int
    batch: int


def _plan(schedule: Schedule, now: datetime, config: DispatchConfig) -> DispatchPlan:
    assert schedule.next_run_at is not None
    # Parsed once per dispatch: the row was valid when written, but a zone can
    # leave tzdata; that raises here and the schedule is parked.
    return plan_dispatch(
        parse_timing(spec_of(schedule)),
        next_run_at=schedule.next_run_at,
        now=now,
        horizon=timedelta(seconds=config.horizon_s),
        grace=timedelta(seconds=config.grace_s),
        misfire_policy=MisfirePolicy(schedule.misfire_policy),
        catchup_window_s=schedule.catchup_window_s,
        dispatched=schedule.dispatched_count,
    )


def _rows(
    schedule: Schedule, automation: Automation, plan: DispatchPlan, now: datetime
) -> list[dict[str, Any]]:
    def row(slot: datetime, status: ExecutionStatus, **values: Any) -> dict[str, Any]:
        # Same keys in every row: SQLAlchemy then batches them into few statements.
        return {
            "id": uuid.uuid4(),
            "automation_id": automation.id,
            "workspace_id": schedule.workspace_id,
            "schedule_id": schedule.id,
            "trigger": Trigger.SCHEDULE,
            "total_steps": len(automation.steps),
            "scheduled_for": slot,
            "status": status,
            "available_at": None,
            "finished_at": None,
            "error": None,
            **values,
        }

    rows = []
    for n, slot in enumerate(plan.run):
        jitter = timedelta(seconds=random.uniform(0, schedule.jitter_s))
        # Marked, so that the overlap policy queues catch-up runs one behind another.
        trigger = Trigger.CATCHUP if n < plan.catchup else Trigger.SCHEDULE
        available_at = max(slot + jitter, now)
        rows.append(row(slot, ExecutionStatus.QUEUED, available_at=available_at, trigger=trigger))
    error = MISSED_ERROR.format(policy=schedule.misfire_policy)
    skipped = ExecutionStatus.SKIPPED
    rows += [row(slot, skipped, finished_at=now, error=error) for slot in plan.skipped]
    return rows


def _advance(schedule: Schedule, plan: DispatchPlan, dispatched: int) -> None:
    schedule.next_run_at = plan.next_run_at
    schedule.dispatched_count += dispatched
    schedule.missed_count += len(plan.skipped) + plan.expired
    if plan.next_run_at is None:
        schedule.enabled = False
        schedule.completed_reason = plan.completed_reason


def dispatch_batch(
    session: Session, *, now: datetime, config: DispatchConfig
) -> tuple[list[RunMessage], int]:
    """Dispatch up to one batch of due schedules; returns the runs to send and the batch size."""
    due = session.execute(
        select(Schedule, Automation)
        .join(Automation, Automation.id == Schedule.automation_id)
        .where(
            Schedule.enabled,
            Schedule.next_run_at < now + timedelta(seconds=config.horizon_s),
        )
        .order_by(Schedule.next_run_at)
        .limit(config.batch)
        .with_for_update(of=Schedule, skip_locked=True)
    ).all()
    if not due:
        return [], 0
    work = []
    for schedule, automation in due:
        try:
            plan = _plan(schedule, now, config)
        except Exception as exc:
            # One schedule that cannot be planned (e.g. a zone gone from tzdata)
            # must not stop every other schedule's dispatch: park it, visibly.
            log.exception("schedule %s cannot be planned; disabling it", schedule.id)
            schedule.enabled = False
            schedule.completed_reason = f"disabled: {exc}"[:MAX_REASON]
            continue
        work.append((schedule, automation, plan, _rows(schedule, automation, plan, now)))
    all_rows = [row for *_, rows in work for row in rows]
    inserted: dict[uuid.UUID, datetime] = {}
    if all_rows:
        result = session.execute(
            insert(Execution)
            .on_conflict_do_nothing(constraint="uq_executions_slot")
            .returning(Execution.id, Execution.available_at, Execution.status),
            all_rows,
        )
        inserted = {r.id: r.available_at for r in result if r.status == ExecutionStatus.QUEUED}
    enqueues = []
    for schedule, automation, plan, rows in work:
        ids = [row["id"] for row in rows if row["id"] in inserted]
        _advance(schedule, plan, len(ids))
        enqueues += [
            RunMessage(
                i,
                automation.max_retries,
                delay_ms=int((inserted[i] - now).total_seconds() * 1000),
            )
            for i in ids
        ]
    return enqueues, len(due)


def count_due(session: Session, *, now: datetime, horizon_s: int) -> int:
    """Due schedules left after a pass: ones another transaction held locked."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Schedule)
            .where(Schedule.enabled, Schedule.next_run_at < now + timedelta(seconds=horizon_s))
        )
        or 0
    )


def beat(session: Session, name: str, **details: Any) -> None:
    """Record that a periodic job ran (the dashboard warns when it goes quiet)."""
    session.execute(
        insert(Heartbeat)
        .values(name=name, at=func.now(), details=details)
        .on_conflict_do_update(index_elements=["name"], set_={"at": func.now(), "details": details})
    )
