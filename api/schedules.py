"""/v1/schedules: create, read, list, replace, pause, resume, delete, trigger now, preview,
backfill."""

from __future__ import annotations

import logging
import uuid

from fastapi import APIRouter, status
from sqlalchemy.orm import Session

from api.auth import Acting
from api.problems import documented
from api.responses import (
    BackfillOut,
    BackfillPreviewOut,
    Deleted,
    Preview,
    RunStarted,
    ScheduleOut,
)
from api.schemas import (
    BackfillIn,
    IdempotencyKeyHeader,
    PauseIn,
    PreviewIn,
    RunBody,
    ScheduleIn,
    TimingIn,
    fingerprint,
    keyed,
)
from core.access import Actor
from core.errors import NotFound
from core.timing import describe, preview
from core.vocabulary import ScheduleState
from db import backfill, commands, idempotency, queries
from db.session import db_now, session_scope
from tasks import actions

log = logging.getLogger("stepwise.api")
router = APIRouter(
    prefix="/v1/schedules",
    tags=["schedules"],
    responses=documented(400, 401, 403, 404, 409, 422),
)


def _row(session: Session, schedule_id: uuid.UUID, actor: Actor) -> ScheduleOut:
    row = queries.get_schedule_row(session, schedule_id, actor=actor)
    if row is None:
        raise NotFound(f"schedule {schedule_id} does not exist (or was deleted)")
    return ScheduleOut.model_validate(row)


def _dispatch_soon() -> None:
    """Dispatch now, so a slot due within the minute is not late; the tick covers a failure."""
    try:
        actions.schedules_changed()
    except Exception as exc:  # Redis away: the next minute tick dispatches anyway
        log.warning("saved; the scheduler picks it up at its next tick (%s)", type(exc).__name__)


@router.post("", status_code=status.HTTP_201_CREATED)
def create_schedule(
    body: ScheduleIn, actor: Acting, idempotency_key: IdempotencyKeyHeader = None
) -> ScheduleOut:
    definition = body.parsed()
    with session_scope() as session:
        made = None
        if idempotency_key is not None:
            made = idempotency.claim(session, actor, idempotency_key, fingerprint("schedule", body))
        if made is None:
            schedule = commands.create_schedule(
                session, body.automation_id, definition, actor=actor
            )
            made = schedule.id
            if idempotency_key is not None:
                idempotency.remember(session, actor, idempotency_key, made)
        out = _row(session, made, actor)
    _dispatch_soon()
    return out


@router.post("/preview")
def preview_schedule(body: PreviewIn, actor: Acting) -> Preview:
    """Check a timing as a save would, and list its next runs; nothing is saved."""
    definition = body.parsed()
    with session_scope() as session:
        now = db_now(session)
        queries.scope(session, actor)
    # A new interval schedule counts from its creation: previewed as if created now.
    timing = definition.timing.anchored(now)
    return Preview(
        description=describe(timing),
        timezone=timing.timezone,
        next_runs=preview(timing, now, body.count),
    )


@router.get("")
def list_schedules(
    actor: Acting,
    automation_id: uuid.UUID | None = None,
    state: ScheduleState | None = None,
) -> list[ScheduleOut]:
    """The schedules of live automations, by automation name."""
    with session_scope() as session:
        rows = queries.list_schedules(
            session, actor=actor, automation_id=automation_id, state=state
        )
        return [ScheduleOut.model_validate(row) for row in rows]


@router.get("/{schedule_id}")
def get_schedule(schedule_id: uuid.UUID, actor: Acting) -> ScheduleOut:
    with session_scope() as session:
        return _row(session, schedule_id, actor)


@router.put("/{schedule_id}")
def update_schedule(schedule_id: uuid.UUID, body: TimingIn, actor: Acting) -> ScheduleOut:
    """Replace the timing and policies; the next run is computed from now."""
    definition = body.parsed()
    with session_scope() as session:
        commands.update_schedule(session, schedule_id, definition, actor=actor)
        out = _row(session, schedule_id, actor)
    _dispatch_soon()
    return out


@router.post("/{schedule_id}/pause")
def pause_schedule(
    schedule_id: uuid.UUID, actor: Acting, body: PauseIn | None = None
) -> ScheduleOut:
    """Pause, with an optional note (shown with the schedule until it is resumed): runs
    of later slots that have not started are withdrawn."""
    note = None if body is None else body.note
    with session_scope() as session:
        commands.set_schedule_enabled(session, schedule_id, False, actor=actor, note=note)
        return _row(session, schedule_id, actor)


@router.post("/{schedule_id}/resume")
def resume_schedule(schedule_id: uuid.UUID, actor: Acting) -> ScheduleOut:
    """Resume from the first slot at or after now: the pause is not replayed."""
    with session_scope() as session:
        commands.set_schedule_enabled(session, schedule_id, True, actor=actor)
        out = _row(session, schedule_id, actor)
    _dispatch_soon()
    return out


@router.delete("/{schedule_id}")
def delete_schedule(schedule_id: uuid.UUID, actor: Acting) -> Deleted:
    """Delete the schedule; its open runs are cancelled, its history stays."""
    with session_scope() as session:
        cancelled = commands.delete_schedule(session, schedule_id, actor=actor)
    return Deleted(cancelled_runs=cancelled)


@router.post("/{schedule_id}/trigger", status_code=status.HTTP_202_ACCEPTED)
def trigger_schedule(
    schedule_id: uuid.UUID,
    actor: Acting,
    body: RunBody = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> RunStarted:
    """Run the schedule's automation now, outside its timing (as "Run now" does), with the
    schedule's input, or the body's `input` when it has one. With an `Idempotency-Key`, a
    repeat answers with the first run."""
    given = None if body is None else body.parsed()
    with session_scope() as session:
        schedule = commands.get_schedule(session, schedule_id, actor=actor)
        automation_id = schedule.automation_id
        run_input = schedule.input if given is None else given
    key = keyed(idempotency_key, f"trigger {schedule_id}", body)
    started = actions.run_now(automation_id, actor=actor, run_input=run_input, idempotency_key=key)
    return RunStarted(execution_id=started)


@router.post("/{schedule_id}/backfill/preview")
def preview_backfill(schedule_id: uuid.UUID, body: BackfillIn, actor: Acting) -> BackfillPreviewOut:
    """How many slots a backfill of the range would cover, and how many already have their
    run; nothing is written."""
    with session_scope() as session:
        found = backfill.preview_backfill(session, schedule_id, body.start, body.end, actor=actor)
    return BackfillPreviewOut(slots=found.slots, present=found.present)


@router.post("/{schedule_id}/backfill", status_code=status.HTTP_202_ACCEPTED)
def backfill_schedule(schedule_id: uuid.UUID, body: BackfillIn, actor: Acting) -> BackfillOut:
    """One run per slot of the schedule in [from, to) that has no run yet (a range of more
    slots than a backfill makes is refused, as is one past the workspace's runs-a-minute
    quota); the same range again makes nothing."""
    done = actions.backfill(schedule_id, body.start, body.end, actor=actor)
    return BackfillOut(
        execution_ids=done.execution_ids,
        created=len(done.created),
        skipped_present=done.present,
    )
