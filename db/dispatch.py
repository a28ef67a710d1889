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

from db.models import Automation, Execution, Heartbeat, Schedule
from stepwise.schedule import DispatchPlan, ScheduleSpec, plan_dispatch

log = logging.getLogger("stepwise.dispatch")
MISSED_ERROR = "missed: nothing dispatched at this time (misfire policy {policy})"


@dataclass(frozen=True)
class Enqueue:
    """A run to hand to the workers once the transaction has committed."""

    execution_id: uuid.UUID
    due_in_ms: int  # from the database's `now` of the dispatch
    max_retries: int


@dataclass(frozen=True)
class DispatchConfig:
    horizon_s: int
    grace_s: int
    batch: int


def spec_of(schedule: Schedule) -> ScheduleSpec:
    return ScheduleSpec(
        kind=schedule.kind,
        timezone=schedule.timezone,
        cron_expr=schedule.cron_expr,
        interval_s=schedule.interval_s,
        run_at=schedule.run_at,
        start_at=schedule.start_at,
        end_at=schedule.end_at,
        max_runs=schedule.max_runs,
        anchor=schedule.created_at,
    )


def _plan(schedule: Schedule, now: datetime, config: DispatchConfig) -> DispatchPlan:
    assert schedule.next_run_at is not None
    return plan_dispatch(
        spec_of(schedule),
        next_run_at=schedule.next_run_at,
        now=now,
        horizon=timedelta(seconds=config.horizon_s),
        grace=timedelta(seconds=config.grace_s),
        misfire_policy=schedule.misfire_policy,
        catchup_window_s=schedule.catchup_window_s,
        dispatched=schedule.dispatched_count,
    )


def _rows(
    schedule: Schedule, automation: Automation, plan: DispatchPlan, now: datetime
) -> list[dict[str, Any]]:
    def row(slot: datetime, status: str, **values: Any) -> dict[str, Any]:
        # Same keys in every row: SQLAlchemy then batches them into few statements.
        return {
            "id": uuid.uuid4(),
            "automation_id": automation.id,
            "schedule_id": schedule.id,
            "trigger": "schedule",
            "total_steps": len(automation.steps),
            "scheduled_for": slot,
            "status": status,
            "available_at": None,
            "finished_at": None,
            "error": None,
            **values,
        }

    rows = []
    for slot in plan.run:
        jitter = timedelta(seconds=random.uniform(0, schedule.jitter_s))
        rows.append(row(slot, "queued", available_at=max(slot + jitter, now)))
    error = MISSED_ERROR.format(policy=schedule.misfire_policy)
    rows += [row(slot, "skipped", finished_at=now, error=error) for slot in plan.skipped]
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
) -> tuple[list[Enqueue], int]:
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
            schedule.completed_reason = f"disabled: {exc}"[:200]
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
        inserted = {r.id: r.available_at for r in result if r.status == "queued"}
    enqueues = []
    for schedule, automation, plan, rows in work:
        ids = [row["id"] for row in rows if row["id"] in inserted]
        _advance(schedule, plan, len(ids))
        enqueues += [
            Enqueue(i, int((inserted[i] - now).total_seconds() * 1000), automation.max_retries)
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
