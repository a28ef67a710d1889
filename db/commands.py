"""Everything a person changes: automations, schedules, and actions on executions.

Each function validates its input completely before the first write, so a
rejected input leaves the database untouched, and records who did what in the
audit log. Functions take a session and never commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.orm import Session

from db.dispatch import spec_of
from db.models import AuditLog, Automation, Execution, Schedule
from db.runs import db_now
from db.session import rowcount
from stepwise.automation import AutomationInput, validate_automation
from stepwise.errors import FieldError, InvalidState, NotFound, ValidationFailed
from stepwise.schedule import (
    MISFIRE_POLICIES,
    OVERLAP_POLICIES,
    ScheduleSpec,
    initial_next_run_at,
    validate_spec,
)
from stepwise.settings import get_settings

MAX_CATCHUP_WINDOW_S = 7 * 86400
MAX_JITTER_S = 3600


def audit(
    session: Session,
    actor: str,
    action: str,
    target_type: str,
    target_id: uuid.UUID,
    **details: Any,
) -> None:
    session.add(
        AuditLog(
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            details=details,
        )
    )


# --- automations ---------------------------------------------------------------


def _automation_values(data: AutomationInput) -> dict[str, Any]:
    return {
        "name": data.name.strip(),
        "description": data.description,
        "agent_url": data.agent_url.strip(),
        "steps": [{"name": s.name.strip(), "message": s.message} for s in data.steps],
        "project_context": data.project_context,
        "step_timeout_s": data.step_timeout_s,
        "max_retries": data.max_retries,
        "owner_id": data.owner_id,
        "headers_ref": data.headers_ref,
    }


def create_automation(session: Session, data: AutomationInput, *, actor: str) -> Automation:
    validate_automation(data)
    automation = Automation(**_automation_values(data))
    session.add(automation)
    session.flush()
    audit(session, actor, "create", "automation", automation.id, name=automation.name)
    return automation


def get_automation(session: Session, automation_id: uuid.UUID) -> Automation:
    automation = session.get(Automation, automation_id)
    if automation is None or automation.archived_at is not None:
        raise NotFound(f"automation {automation_id} does not exist (or was deleted)")
    return automation


def update_automation(
    session: Session, automation_id: uuid.UUID, data: AutomationInput, *, actor: str
) -> Automation:
    validate_automation(data)
    automation = get_automation(session, automation_id)
    for key, value in _automation_values(data).items():
        setattr(automation, key, value)
    audit(session, actor, "edit", "automation", automation.id)
    return automation


def delete_automation(session: Session, automation_id: uuid.UUID, *, actor: str) -> int:
    """Archive the automation, stop its schedules and cancel its queued runs; returns cancelled."""
    automation = get_automation(session, automation_id)
    automation.archived_at = func.now()
    session.execute(
        update(Schedule)
        .where(Schedule.automation_id == automation_id)
        .values(enabled=False, completed_reason="automation deleted")
    )
    cancelled = _cancel_queued(
        session, Execution.automation_id == automation_id, "cancelled: the automation was deleted"
    )
    audit(session, actor, "delete", "automation", automation_id, cancelled=cancelled)
    return cancelled


# --- schedules -------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleInput:
    spec: ScheduleSpec
    misfire_policy: str = "run_once"
    catchup_window_s: int = 3600
    overlap_policy: str = "skip"
    jitter_s: int = 0
    enabled: bool = True


def validate_schedule(data: ScheduleInput, *, retention_days: int) -> None:
    """Raise ValidationFailed listing every problem with the schedule."""
    errors: list[FieldError] = []
    try:
        validate_spec(data.spec)
    except ValidationFailed as exc:
        errors += exc.errors
    if data.misfire_policy not in MISFIRE_POLICIES:
        errors.append(FieldError("misfire_policy", f"must be one of {', '.join(MISFIRE_POLICIES)}"))
    if data.overlap_policy not in OVERLAP_POLICIES:
        errors.append(FieldError("overlap_policy", f"must be one of {', '.join(OVERLAP_POLICIES)}"))
    # History must outlive the catch-up window, or a purged slot could run again.
    window_cap = min(MAX_CATCHUP_WINDOW_S, retention_days * 86400)
    if not 0 <= data.catchup_window_s <= window_cap:
        errors.append(FieldError("catchup_window_s", f"must be between 0 and {window_cap} seconds"))
    if not 0 <= data.jitter_s <= MAX_JITTER_S:
        errors.append(FieldError("jitter_s", f"must be between 0 and {MAX_JITTER_S} seconds"))
    if errors:
        raise ValidationFailed(errors)


def _schedule_values(data: ScheduleInput) -> dict[str, Any]:
    spec = data.spec
    return {
        "kind": spec.kind,
        "cron_expr": spec.cron_expr if spec.kind == "cron" else None,
        "interval_s": spec.interval_s if spec.kind == "interval" else None,
        "run_at": spec.run_at if spec.kind == "once" else None,
        "timezone": spec.timezone,
        "start_at": spec.start_at,
        "end_at": spec.end_at,
        "max_runs": spec.max_runs,
        "misfire_policy": data.misfire_policy,
        "catchup_window_s": data.catchup_window_s,
        "overlap_policy": data.overlap_policy,
        "jitter_s": data.jitter_s,
    }


def _arm(schedule: Schedule, spec: ScheduleSpec, now: datetime) -> None:
    """Point next_run_at at the first slot from now on (never replaying the past)."""
    next_run_at, reason = initial_next_run_at(spec, now)
    schedule.next_run_at = next_run_at
    schedule.completed_reason = reason
    if next_run_at is None:
        schedule.enabled = False


def create_schedule(
    session: Session,
    automation_id: uuid.UUID,
    data: ScheduleInput,
    *,
    actor: str,
    retention_days: int | None = None,
) -> Schedule:
    now = db_now(session)
    data = replace(data, spec=replace(data.spec, anchor=data.spec.anchor or now))
    validate_schedule(data, retention_days=retention_days or get_settings().retention_days)
    get_automation(session, automation_id)
    schedule = Schedule(
        automation_id=automation_id, enabled=data.enabled, created_at=now, **_schedule_values(data)
    )
    if data.enabled:
        _arm(schedule, data.spec, now)
    session.add(schedule)
    session.flush()
    audit(session, actor, "create", "schedule", schedule.id, **_describe(schedule))
    return schedule


def get_schedule(session: Session, schedule_id: uuid.UUID) -> Schedule:
    schedule = session.get(Schedule, schedule_id)
    if schedule is None:
        raise NotFound(f"schedule {schedule_id} does not exist (or was deleted)")
    return schedule


def update_schedule(
    session: Session,
    schedule_id: uuid.UUID,
    data: ScheduleInput,
    *,
    actor: str,
    retention_days: int | None = None,
) -> Schedule:
    schedule = get_schedule(session, schedule_id)
    data = replace(data, spec=replace(data.spec, anchor=schedule.created_at))
    validate_schedule(data, retention_days=retention_days or get_settings().retention_days)
    now = db_now(session)
    for key, value in _schedule_values(data).items():
        setattr(schedule, key, value)
    schedule.enabled = data.enabled
    schedule.completed_reason = None
    # Runs already queued for the old timing would fire at the old times.
    _cancel_future(session, schedule_id, now, "cancelled: the schedule was edited")
    if data.enabled:
        _arm(schedule, data.spec, now)
    audit(session, actor, "edit", "schedule", schedule_id, **_describe(schedule))
    return schedule


def set_schedule_enabled(
    session: Session, schedule_id: uuid.UUID, enabled: bool, *, actor: str
) -> Schedule:
    """Pause or resume. Resuming starts from the next slot after now: the pause is not replayed."""
    schedule = get_schedule(session, schedule_id)
    get_automation(session, schedule.automation_id)
    now = db_now(session)
    if enabled:
        schedule.enabled = True
        schedule.completed_reason = None
        _arm(schedule, spec_of(schedule), now)
    else:
        schedule.enabled = False
        _cancel_future(session, schedule_id, now, "cancelled: the schedule was paused")
    audit(session, actor, "resume" if enabled else "pause", "schedule", schedule_id)
    return schedule


def delete_schedule(session: Session, schedule_id: uuid.UUID, *, actor: str) -> int:
    """Delete the schedule; its queued runs are cancelled (history stays). Returns cancelled."""
    schedule = get_schedule(session, schedule_id)
    cancelled = _cancel_queued(
        session, Execution.schedule_id == schedule_id, "cancelled: the schedule was deleted"
    )
    audit(
        session,
        actor,
        "delete",
        "schedule",
        schedule_id,
        cancelled=cancelled,
        **_describe(schedule),
    )
    session.delete(schedule)
    return cancelled


def _describe(schedule: Schedule) -> dict[str, Any]:
    return {
        "kind": schedule.kind,
        "cron_expr": schedule.cron_expr,
        "interval_s": schedule.interval_s,
        "timezone": schedule.timezone,
    }


# --- executions ------------------------------------------------------------------


def _cancel_queued(session: Session, where: Any, reason: str) -> int:
    return rowcount(
        session.execute(
            update(Execution)
            .where(where, Execution.status == "queued")
            .values(status="cancelled", finished_at=func.now(), error=reason)
        )
    )


def _cancel_future(session: Session, schedule_id: uuid.UUID, now: datetime, reason: str) -> int:
    return _cancel_queued(
        session,
        (Execution.schedule_id == schedule_id) & (Execution.scheduled_for > now),
        reason,
    )


def create_manual_execution(session: Session, automation_id: uuid.UUID, *, actor: str) -> Execution:
    """A run outside any schedule ("Run now", "Test run"); the caller sends it after commit."""
    automation = get_automation(session, automation_id)
    now = db_now(session)
    execution = Execution(
        automation_id=automation_id,
        schedule_id=None,
        trigger="manual",
        scheduled_for=now,
        status="queued",
        total_steps=len(automation.steps),
        available_at=now,
    )
    session.add(execution)
    session.flush()
    audit(session, actor, "run_now", "automation", automation_id, execution_id=str(execution.id))
    return execution


def get_execution(session: Session, execution_id: uuid.UUID) -> Execution:
    execution = session.get(Execution, execution_id)
    if execution is None:
        raise NotFound(f"execution {execution_id} does not exist")
    return execution


def cancel_execution(session: Session, execution_id: uuid.UUID, *, actor: str) -> Execution:
    """Cancel a queued or running execution; a running worker stops before its next step."""
    execution = get_execution(session, execution_id)
    if execution.status not in ("queued", "running"):
        raise InvalidState(
            f"only queued or running executions can be cancelled (this one is {execution.status})"
        )
    execution.status = "cancelled"
    execution.finished_at = func.now()
    execution.lease_expires_at = None
    execution.error = f"cancelled by {actor}"
    audit(session, actor, "cancel", "execution", execution_id)
    return execution


def retry_execution(
    session: Session, execution_id: uuid.UUID, *, actor: str
) -> tuple[Execution, int]:
    """Re-open a failed execution at the step that failed; returns it and its retry budget.

    The same row runs again, so a slot still has exactly one execution and the
    agent sees the same Idempotency-Key for each step.
    """
    execution = get_execution(session, execution_id)
    if execution.status not in ("failed", "cancelled"):
        raise InvalidState(
            f"only failed or cancelled executions can be retried (this one is {execution.status})"
        )
    automation = get_automation(session, execution.automation_id)
    if execution.schedule_id is not None and execution.status == "failed":
        session.execute(
            update(Schedule)
            .where(Schedule.id == execution.schedule_id)
            .values(run_count=Schedule.run_count - 1, failure_count=Schedule.failure_count - 1)
        )
    execution.status = "queued"
    execution.finished_at = None
    execution.available_at = func.now()
    audit(session, actor, "retry", "execution", execution_id)
    return execution, automation.max_retries
