"""Schedules: create, edit, pause, resume, delete, run now, preview and backfill.

Each public function is one unit of work (`service.unit`): the role checked first (EDIT
to change a schedule, RUN to start runs), the change made (`db.schedules`,
`db.backfill`) and audited. A write that may make a slot due before the scheduler's
next minute tick (create, edit, resume) then asks for a dispatch now, best effort: if
Redis is away the write stands and the tick dispatches it. A `*_in` function makes the
same change inside a unit already open (`service.definitions`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import partial

from sqlalchemy.orm import Session

from core.access import Actor
from core.backfill import pause_note
from core.errors import NotFound
from core.run_input import RunInput
from core.schedule import ScheduleDefinition
from core.timing import Timing, preview
from core.vocabulary import AuditAction, AuditTarget, Permission
from db import backfill as backfills
from db import queries, schedules
from db.models import Schedule
from db.queries import ScheduleRow
from db.session import db_now
from service.executions import start_in
from service.unit import Unit, read, unit_of_work
from tasks import send


def create(
    automation_id: uuid.UUID,
    definition: ScheduleDefinition,
    *,
    actor: Actor,
    idempotency_key: tuple[str, str] | None = None,
) -> ScheduleRow:
    """A new schedule of the automation, as listed; a repeat of an `Idempotency-Key` (the
    key and the request's fingerprint) answers with the schedule it made."""
    with unit_of_work(actor, Permission.EDIT) as unit:
        made, _ = unit.idempotent(
            idempotency_key, lambda: create_in(unit, automation_id, definition).id
        )
        return _row(unit, made)


def create_in(unit: Unit, automation_id: uuid.UUID, definition: ScheduleDefinition) -> Schedule:
    """`create` inside an open unit (its role already checked)."""
    schedule = schedules.create_schedule(unit.session, automation_id, definition, actor=unit.actor)
    unit.audit(
        AuditAction.CREATE, AuditTarget.SCHEDULE, schedule.id, **schedules.describe(schedule)
    )
    _dispatch_soon(unit)
    return schedule


def update(schedule_id: uuid.UUID, definition: ScheduleDefinition, *, actor: Actor) -> ScheduleRow:
    """Replace the timing and policies; the next run is computed from now."""
    with unit_of_work(actor, Permission.EDIT) as unit:
        update_in(unit, schedule_id, definition)
        return _row(unit, schedule_id)


def update_in(unit: Unit, schedule_id: uuid.UUID, definition: ScheduleDefinition) -> Schedule:
    """`update` inside an open unit; the audit row names each field changed, old and new."""
    done = schedules.update_schedule(unit.session, schedule_id, definition, actor=unit.actor)
    unit.audit(
        AuditAction.EDIT,
        AuditTarget.SCHEDULE,
        schedule_id,
        withdrawn=done.withdrawn,
        dispatched=len(done.dispatched),
        changed=done.changed,
        **schedules.describe(done.schedule),
    )
    _send_dispatched(unit, done)
    _dispatch_soon(unit)
    return done.schedule


def pause(schedule_id: uuid.UUID, *, actor: Actor, note: str | None = None) -> ScheduleRow:
    """Pause, with an optional note (shown with the schedule until it is resumed): runs of
    later slots that have not started are withdrawn."""
    with unit_of_work(actor, Permission.EDIT) as unit:
        pause_in(unit, schedule_id, note)
        return _row(unit, schedule_id)


def pause_in(unit: Unit, schedule_id: uuid.UUID, note: str | None = None) -> Schedule:
    """`pause` inside an open unit."""
    note = pause_note(note)
    done = schedules.pause_schedule(unit.session, schedule_id, actor=unit.actor, note=note)
    details: dict[str, object] = {"withdrawn": done.withdrawn, "dispatched": len(done.dispatched)}
    details |= {} if note is None else {"note": note}
    unit.audit(AuditAction.PAUSE, AuditTarget.SCHEDULE, schedule_id, **details)
    _send_dispatched(unit, done)
    return done.schedule


def resume(schedule_id: uuid.UUID, *, actor: Actor) -> ScheduleRow:
    """Resume from the first slot at or after now: the pause is not replayed."""
    with unit_of_work(actor, Permission.EDIT) as unit:
        schedules.resume_schedule(unit.session, schedule_id, actor=actor)
        unit.audit(AuditAction.RESUME, AuditTarget.SCHEDULE, schedule_id, withdrawn=0)
        _dispatch_soon(unit)
        return _row(unit, schedule_id)


def delete(schedule_id: uuid.UUID, *, actor: Actor) -> int:
    """Delete the schedule; its open runs are cancelled (how many), its history stays."""
    with unit_of_work(actor, Permission.EDIT) as unit:
        done = schedules.delete_schedule(unit.session, schedule_id, actor=actor)
        details = {"cancelled": done.cancelled, **schedules.describe(done.schedule)}
        unit.audit(AuditAction.DELETE, AuditTarget.SCHEDULE, schedule_id, **details)
        return done.cancelled


def run_now(
    schedule_id: uuid.UUID,
    *,
    actor: Actor,
    run_input: RunInput | None = None,
    idempotency_key: tuple[str, str] | None = None,
) -> uuid.UUID:
    """Run the schedule's automation now, outside its timing (as "Run now" does), with the
    schedule's input, or `run_input` when given; the execution id (a repeat of an
    `Idempotency-Key`: the first run's, nothing new). The run is the schedule's (trigger
    `manual`): counted and listed with it, taking none of its slots."""
    with unit_of_work(actor, Permission.RUN) as unit:
        schedule = schedules.find_schedule(unit.session, schedule_id, actor=actor)
        given = schedule.input if run_input is None else run_input
        made, _ = unit.idempotent(
            idempotency_key,
            lambda: start_in(unit, schedule.automation_id, given, schedule_id=schedule.id),
        )
    return made


def preview_slots(
    definition: ScheduleDefinition, count: int, *, actor: Actor
) -> tuple[Timing, list[datetime]]:
    """A timing checked as a save would, and its next `count` slots; nothing is saved. A
    new interval schedule counts from its creation: previewed as if created now."""
    now = read(_now, actor=actor)
    timing = definition.timing.anchored(now)
    return timing, preview(timing, now, count)


def _now(session: Session, *, actor: Actor) -> datetime:
    queries.scope(session, actor)  # a reader of the workspace, as any read
    return db_now(session)


def preview_backfill(
    schedule_id: uuid.UUID, start: datetime | None, end: datetime | None, *, actor: Actor
) -> backfills.BackfillPreview:
    """How many slots a backfill of `[start, end)` would cover, and how many already have
    their run (ValidationFailed for a bad range); nothing is written."""
    return read(backfills.preview_backfill, schedule_id, start, end, actor=actor)


def backfill(
    schedule_id: uuid.UUID, start: datetime | None, end: datetime | None, *, actor: Actor
) -> backfills.Backfilled:
    """Run the schedule's slots in `[start, end)` that have no run yet (`db.backfill`),
    audited, the runs sent after commit."""
    with unit_of_work(actor, Permission.RUN) as unit:
        done = backfills.backfill(unit.session, schedule_id, start, end, actor=actor)
        unit.audit(
            AuditAction.BACKFILL,
            AuditTarget.SCHEDULE,
            schedule_id,
            start=done.span.start.isoformat(),
            end=done.span.end.isoformat(),
            created=len(done.created),
            present=done.present,
        )
        unit.after_commit(partial(send.send_runs, done.created))
    return done


def _row(unit: Unit, schedule_id: uuid.UUID) -> ScheduleRow:
    row = queries.get_schedule_row(unit.session, schedule_id, actor=unit.actor)
    if row is None:
        raise NotFound(f"schedule {schedule_id} does not exist (or was deleted)")
    return row


def _send_dispatched(unit: Unit, done: schedules.Written) -> None:
    """Send the runs a pause or an edit dispatched for slots due before it, after the
    commit, best effort: if Redis is away, housekeeping sends the queued rows later."""
    if done.dispatched:
        unit.after_commit(partial(send.send_runs, done.dispatched), best_effort=True)


def _dispatch_soon(unit: Unit) -> None:
    """Dispatch right after the commit, so a slot due within the minute is not late."""
    unit.after_commit(send.dispatch_soon, best_effort=True)
