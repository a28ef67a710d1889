"""Schedules in the database: create, edit, pause, resume and delete them.

Schedules arrive already parsed (`core.schedule.parse_schedule`), so a rejected input
never reaches the database. Every function takes the acting person and reaches only
their workspace's rows; the role check and the audit row of a write are the caller's
(`service.schedules`), who reads what to audit from the `Written` a write returns. A
write locks the schedule's row first: a dispatch of it in progress commits before, and
none starts until the write's transaction ends. Functions take a session and never
commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from core.access import Actor
from core.errors import NotFound
from core.schedule import ScheduleDefinition, initial_next_run_at
from core.settings import get_settings
from core.timing import Timing, parse_timing, spec_of
from core.vocabulary import ExecutionStatus, Permission
from db.automations import Changes, changes, live_automation, within_quota
from db.dispatch import DispatchConfig, dispatch_batch
from db.models import Execution, Schedule
from db.runs import SCHEDULE_DELETED, RunMessage, cancel_executions
from db.session import db_now, rowcount
from db.workspaces import authorize


@dataclass(frozen=True)
class Written:
    """A schedule as a write left it, and what the write did to its runs."""

    schedule: Schedule
    withdrawn: int = 0  # runs of its future slots withdrawn (`_withdraw_future`)
    cancelled: int = 0  # its open runs cancelled (deleted with it)
    changed: Changes = field(default_factory=dict)  # what an edit changed
    # Runs of slots due before a pause or an edit, dispatched by it (`_settle_due`): the
    # caller sends them once the write has committed.
    dispatched: list[RunMessage] = field(default_factory=list)


def schedule_values(data: ScheduleDefinition) -> dict[str, Any]:
    timing = data.timing
    return {
        "kind": timing.kind,
        "cron_expr": timing.cron_expr,
        "interval_s": timing.interval_s,
        "run_at": timing.run_at,
        "timezone": timing.timezone,
        "start_at": timing.start_at,
        "end_at": timing.end_at,
        "max_runs": timing.max_runs,
        "misfire_policy": data.misfire_policy,
        "catchup_window_s": data.catchup_window_s,
        "overlap_policy": data.overlap_policy,
        "jitter_s": data.jitter_s,
        "input": data.input,
    }


def describe(schedule: Schedule) -> dict[str, Any]:
    """The schedule's timing in a few fields, as its audit rows name it."""
    return {
        "kind": schedule.kind,
        "cron_expr": schedule.cron_expr,
        "interval_s": schedule.interval_s,
        "timezone": schedule.timezone,
    }


def _arm(schedule: Schedule, timing: Timing, now: datetime) -> None:
    """Point next_run_at at the first slot from now on (never replaying the past)."""
    next_run_at, reason = initial_next_run_at(timing, now)
    schedule.next_run_at = next_run_at
    schedule.completed_reason = reason
    schedule.parked_error = None
    if next_run_at is None:
        schedule.enabled = False


def create_schedule(
    session: Session, automation_id: uuid.UUID, data: ScheduleDefinition, *, actor: Actor
) -> Schedule:
    """A new schedule; an interval without start_at counts from now (its created_at)."""
    now = db_now(session)
    live_automation(session, automation_id, actor=actor)
    within_quota(session, actor, Schedule, "schedules")
    schedule = Schedule(
        automation_id=automation_id,
        workspace_id=actor.workspace_id,
        enabled=data.enabled,
        created_at=now,
        **schedule_values(data),
    )
    if data.enabled:
        _arm(schedule, data.timing.anchored(now), now)
    session.add(schedule)
    session.flush()
    return schedule


def get_schedule(session: Session, schedule_id: uuid.UUID, *, actor: Actor) -> Schedule:
    """The actor's workspace's schedule, for a reader (READ checked); NotFound otherwise."""
    authorize(session, actor, Permission.READ)
    return find_schedule(session, schedule_id, actor=actor)


def find_schedule(
    session: Session, schedule_id: uuid.UUID, *, actor: Actor, lock: bool = False
) -> Schedule:
    """The actor's workspace's schedule (row-locked with `lock`); NotFound otherwise."""
    schedule = session.get(Schedule, schedule_id, with_for_update=lock or None)
    if schedule is None or schedule.workspace_id != actor.workspace_id:
        raise NotFound(f"schedule {schedule_id} does not exist (or was deleted)")
    return schedule


def update_schedule(
    session: Session, schedule_id: uuid.UUID, data: ScheduleDefinition, *, actor: Actor
) -> Written:
    """New timing and policies; an interval without start_at keeps counting from creation.
    Slots due before now that no dispatch reached yet are dispatched first, under the old
    timing and policies (`_settle_due`)."""
    schedule = find_schedule(session, schedule_id, actor=actor, lock=True)
    now = db_now(session)
    dispatched = _settle_due(session, schedule, now)  # under the old timing and policies
    new = {**schedule_values(data), "enabled": data.enabled}
    changed = changes(schedule, new)
    for key, value in new.items():
        setattr(schedule, key, value)
    schedule.completed_reason = schedule.parked_error = None
    # Runs queued for the old timing would fire at the old times; the next tick
    # dispatches the new timing's slots from now on.
    withdrawn = _withdraw_future(session, schedule, now)
    if data.enabled:
        _arm(schedule, data.timing.anchored(schedule.created_at), now)
        _mark_paused(schedule, None, None, now)
    return Written(schedule, withdrawn=withdrawn, changed=changed, dispatched=dispatched)


def pause_schedule(
    session: Session, schedule_id: uuid.UUID, *, actor: Actor, note: str | None = None
) -> Written:
    """Pause, with a note (already checked: `core.backfill.pause_note`) kept with who paused
    and when. Slots due before now that no dispatch reached yet are dispatched now, by the
    misfire policy (`_settle_due`); the runs of slots after now that have not started are
    withdrawn; runs of earlier slots go on."""
    schedule = find_schedule(session, schedule_id, actor=actor, lock=True)
    live_automation(session, schedule.automation_id, actor=actor)
    now = db_now(session)
    dispatched = _settle_due(session, schedule, now)
    schedule.enabled = False
    withdrawn = _withdraw_future(session, schedule, now)
    _mark_paused(schedule, actor, note, now)
    return Written(schedule, withdrawn=withdrawn, dispatched=dispatched)


def resume_schedule(session: Session, schedule_id: uuid.UUID, *, actor: Actor) -> Written:
    """Resume from the first slot at or after now: the pause is not replayed, its note goes."""
    schedule = find_schedule(session, schedule_id, actor=actor, lock=True)
    live_automation(session, schedule.automation_id, actor=actor)
    now = db_now(session)
    schedule.enabled = True
    schedule.completed_reason = schedule.parked_error = None
    _arm(schedule, parse_timing(spec_of(schedule)), now)
    _mark_paused(schedule, None, None, now)
    return Written(schedule)


def _settle_due(session: Session, schedule: Schedule, now: datetime) -> list[RunMessage]:
    """Dispatch the schedule's slots due before `now` that no dispatch reached yet (the
    scheduler was down, or its tick had not come), exactly as a tick at `now` would:
    each runs, or is recorded skipped or counted in `missed_count` by the misfire policy.
    Returns the runs to send once the write commits.

    Decided here, at the pause (or the edit), not at the resume: a resume, which starts
    from the first slot after it so that the paused period is never replayed, can no
    longer tell a slot due before the pause from one of the paused period (both are
    before now); here every undispatched slot before now is one due before the pause,
    and the old timing and policies are still the row's. A schedule already paused has
    none (its own pause settled them).
    """
    if not schedule.enabled:
        return []
    config = DispatchConfig(horizon_s=0, grace_s=get_settings().misfire_grace_s, batch=1)
    dispatched, _ = dispatch_batch(session, now=now, config=config, schedule_id=schedule.id)
    session.refresh(schedule)  # dispatch moved its counters and next_run_at in SQL
    return dispatched


def _mark_paused(schedule: Schedule, by: Actor | None, note: str | None, now: datetime) -> None:
    """Record who paused the schedule, when and why; `by` None clears it (resumed)."""
    schedule.paused_by = None if by is None else by.name
    schedule.paused_at = None if by is None else now
    schedule.pause_note = note


def delete_schedule(session: Session, schedule_id: uuid.UUID, *, actor: Actor) -> Written:
    """Delete the schedule; its open runs, queued or running, are cancelled (history stays).

    The `Written` holds the deleted row (still readable) and how many were cancelled.
    """
    schedule = find_schedule(session, schedule_id, actor=actor, lock=True)
    cancelled = cancel_executions(session, Execution.schedule_id == schedule_id, SCHEDULE_DELETED)
    session.delete(schedule)
    return Written(schedule, cancelled=cancelled)


def _withdraw_future(session: Session, schedule: Schedule, now: datetime) -> int:
    """Delete the runs of slots after `now` that never started, as if never dispatched.

    Cancelling them instead would keep their slot keys taken, and the next dispatch
    (ON CONFLICT DO NOTHING) would step over slots that must run after a resume or
    an edit. A message still in Redis for a deleted row claims nothing. Returns how
    many were withdrawn; `dispatched_count` (which max_runs reads) gives them back.
    """
    withdrawn = rowcount(
        session.execute(
            delete(Execution).where(
                Execution.schedule_id == schedule.id,
                Execution.scheduled_for > now,
                Execution.status == ExecutionStatus.QUEUED,
                Execution.attempt == 0,
            )
        )
    )
    schedule.dispatched_count -= withdrawn
    return withdrawn
