"""/v1/schedules: create, read, list, replace, pause, resume, delete, run now, preview,
backfill."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

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
    keyed,
)
from core.errors import NotFound
from core.timing import describe
from core.vocabulary import ScheduleState
from db import queries
from service import schedules
from service.unit import read

router = APIRouter(
    prefix="/v1/schedules",
    tags=["schedules"],
    responses=documented(400, 401, 403, 404, 409, 422),
)


@router.post("", status_code=status.HTTP_201_CREATED)
def create_schedule(
    body: ScheduleIn, actor: Acting, idempotency_key: IdempotencyKeyHeader = None
) -> ScheduleOut:
    key = keyed(idempotency_key, "schedule", body)
    row = schedules.create(body.automation_id, body.parsed(), actor=actor, idempotency_key=key)
    return ScheduleOut.model_validate(row)


@router.post("/preview")
def preview_schedule(body: PreviewIn, actor: Acting) -> Preview:
    """Check a timing as a save would, and list its next runs; nothing is saved."""
    timing, slots = schedules.preview_slots(body.parsed(), body.count, actor=actor)
    return Preview(description=describe(timing), timezone=timing.timezone, next_runs=slots)


@router.get("")
def list_schedules(
    actor: Acting,
    automation_id: uuid.UUID | None = None,
    state: ScheduleState | None = None,
) -> list[ScheduleOut]:
    """The schedules of live automations, by automation name."""
    rows = read(queries.list_schedules, actor=actor, automation_id=automation_id, state=state)
    return [ScheduleOut.model_validate(row) for row in rows]


@router.get("/{schedule_id}")
def get_schedule(schedule_id: uuid.UUID, actor: Acting) -> ScheduleOut:
    row = read(queries.get_schedule_row, schedule_id, actor=actor)
    if row is None:
        raise NotFound(f"schedule {schedule_id} does not exist (or was deleted)")
    return ScheduleOut.model_validate(row)


@router.put("/{schedule_id}")
def update_schedule(schedule_id: uuid.UUID, body: TimingIn, actor: Acting) -> ScheduleOut:
    """Replace the timing and policies; the next run is computed from now."""
    return ScheduleOut.model_validate(schedules.update(schedule_id, body.parsed(), actor=actor))


@router.post("/{schedule_id}/pause")
def pause_schedule(
    schedule_id: uuid.UUID, actor: Acting, body: PauseIn | None = None
) -> ScheduleOut:
    """Pause, with an optional note (shown with the schedule until it is resumed): runs
    of later slots that have not started are withdrawn."""
    note = None if body is None else body.note
    return ScheduleOut.model_validate(schedules.pause(schedule_id, actor=actor, note=note))


@router.post("/{schedule_id}/resume")
def resume_schedule(schedule_id: uuid.UUID, actor: Acting) -> ScheduleOut:
    """Resume from the first slot at or after now: the pause is not replayed."""
    return ScheduleOut.model_validate(schedules.resume(schedule_id, actor=actor))


@router.delete("/{schedule_id}")
def delete_schedule(schedule_id: uuid.UUID, actor: Acting) -> Deleted:
    """Delete the schedule; its open runs are cancelled, its history stays."""
    return Deleted(cancelled_runs=schedules.delete(schedule_id, actor=actor))


# Its first name, kept for the scripts that call it: "trigger" now means only why an
# execution exists.
@router.post(
    "/{schedule_id}/trigger",
    status_code=status.HTTP_202_ACCEPTED,
    deprecated=True,
    operation_id="trigger_schedule_v1_schedules__schedule_id__trigger_post",
    summary="Trigger Schedule",
)
@router.post("/{schedule_id}/run", status_code=status.HTTP_202_ACCEPTED)
def run_schedule_now(
    schedule_id: uuid.UUID,
    actor: Acting,
    body: RunBody = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> RunStarted:
    """Run the schedule's automation now, outside its timing (as "Run now" does), with the
    schedule's input, or the body's `input` when it has one. With an `Idempotency-Key`, a
    repeat answers with the first execution."""
    given = None if body is None else body.parsed()
    # The scope is stored with each key: it keeps its first word, so that a repeat sent
    # through either path, or from before the rename, matches its first call.
    key = keyed(idempotency_key, f"trigger {schedule_id}", body)
    started = schedules.run_now(schedule_id, actor=actor, run_input=given, idempotency_key=key)
    return RunStarted(execution_id=started)


@router.post("/{schedule_id}/backfill/preview")
def preview_backfill(schedule_id: uuid.UUID, body: BackfillIn, actor: Acting) -> BackfillPreviewOut:
    """How many slots a backfill of the range would cover, and how many already have their
    run; nothing is written."""
    found = schedules.preview_backfill(schedule_id, body.start, body.end, actor=actor)
    return BackfillPreviewOut(slots=found.slots, present=found.present)


@router.post("/{schedule_id}/backfill", status_code=status.HTTP_202_ACCEPTED)
def backfill_schedule(schedule_id: uuid.UUID, body: BackfillIn, actor: Acting) -> BackfillOut:
    """One execution per slot of the schedule in [from, to) that has none yet (a range of more
    slots than a backfill makes is refused, as is one past the workspace's runs-a-minute
    quota); the same range again makes nothing."""
    done = schedules.backfill(schedule_id, body.start, body.end, actor=actor)
    return BackfillOut(
        execution_ids=done.execution_ids,
        created=len(done.created),
        skipped_present=done.present,
    )
