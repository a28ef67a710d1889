"""Everything a person changes: automations, schedules, and actions on executions.

Automations are validated completely before the first write; schedules arrive
already parsed (`core.schedule.parse_schedule`), so a rejected input never reaches
the database. Every change records who did what in the audit log. Functions take
a session and never commit.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from core.automation import AutomationInput, redact_url, validate_automation
from core.errors import InvalidState, NotFound
from core.schedule import ScheduleDefinition, initial_next_run_at
from core.secrets import new_signing_secret
from core.settings import get_settings
from core.timing import Timing, parse_timing, spec_of
from core.vocabulary import (
    AuditAction,
    AuditTarget,
    ExecutionStatus,
    Trigger,
)
from db.models import AuditLog, Automation, Execution, Schedule
from db.runs import AUTOMATION_DELETED, SCHEDULE_DELETED, cancel_runs
from db.session import db_now, rowcount


def audit(
    session: Session,
    actor: str,
    action: AuditAction,
    target_type: AuditTarget,
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
        "concurrency_limit": data.concurrency_limit,
        "rate_limit_per_s": data.rate_limit_per_s,
    }


# Long texts are audited by size, not copied into every audit row.
_AUDIT_BY_SIZE = frozenset({"description", "project_context", "steps"})


def changes(row: Any, new: dict[str, Any]) -> dict[str, list[Any]]:
    """`{field: [old, new]}` for each value `new` changes on `row`, as the audit log keeps it.

    URLs are recorded redacted; long texts and the steps by their size.
    """
    changed = {}
    for name, value in new.items():
        old = getattr(row, name)
        if old == value:
            continue
        changed[name] = [_audited(name, old), _audited(name, value)]
    return changed


def _audited(name: str, value: Any) -> Any:
    if name == "agent_url" and isinstance(value, str):
        return redact_url(value)
    if name in _AUDIT_BY_SIZE:
        return f"{len(value)} steps" if name == "steps" else f"{len(value)} characters"
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def create_automation(session: Session, data: AutomationInput, *, actor: str) -> Automation:
    settings = get_settings()
    validate_automation(data, egress=settings.egress_policy())
    automation = Automation(
        **_automation_values(data),
        signing_secret=settings.secret_box().seal(new_signing_secret()),
    )
    session.add(automation)
    session.flush()
    audit(
        session,
        actor,
        AuditAction.CREATE,
        AuditTarget.AUTOMATION,
        automation.id,
        name=automation.name,
    )
    return automation


def get_automation(session: Session, automation_id: uuid.UUID) -> Automation:
    automation = session.get(Automation, automation_id)
    if automation is None or automation.archived_at is not None:
        raise NotFound(f"automation {automation_id} does not exist (or was deleted)")
    return automation


def rotate_signing_secret(session: Session, automation_id: uuid.UUID, *, actor: str) -> None:
    """A new signing secret for the automation's calls; the old one stops at once."""
    automation = get_automation(session, automation_id)
    automation.signing_secret = get_settings().secret_box().seal(new_signing_secret())
    audit(session, actor, AuditAction.ROTATE_SECRET, AuditTarget.AUTOMATION, automation_id)


def signing_secret(session: Session, automation_id: uuid.UUID) -> str | None:
    """The automation's signing secret in clear, for its editor to give to the agent."""
    sealed = get_automation(session, automation_id).signing_secret
    return None if sealed is None else get_settings().secret_box().open(sealed)


def reseal_secrets(session: Session) -> int:
    """Seal every stored secret with the first key (key rotation); returns how many."""
    box = get_settings().secret_box()
    rows = session.execute(
        select(Automation.id, Automation.signing_secret)
        .where(Automation.signing_secret.is_not(None))
        .with_for_update()
    ).all()
    for automation_id, sealed in rows:
        session.execute(
            update(Automation)
            .where(Automation.id == automation_id)
            .values(signing_secret=box.reseal(str(sealed)))
        )
    return len(rows)


def update_automation(
    session: Session, automation_id: uuid.UUID, data: AutomationInput, *, actor: str
) -> Automation:
    validate_automation(data, egress=get_settings().egress_policy())
    automation = get_automation(session, automation_id)
    new = _automation_values(data)
    changed = changes(automation, new)
    for key, value in new.items():
        setattr(automation, key, value)
    audit(session, actor, AuditAction.EDIT, AuditTarget.AUTOMATION, automation.id, changed=changed)
    return automation


def delete_automation(session: Session, automation_id: uuid.UUID, *, actor: str) -> int:
    """Archive the automation, stop its schedules and cancel its open runs; returns cancelled.

    Queued and running runs alike: no step of the automation starts after this
    commits (a running one stops before its next step; see `runs.cancel_runs`).
    """
    automation = get_automation(session, automation_id)
    automation.archived_at = func.now()
    # Locked first, so that a dispatch in progress commits its runs before they are cancelled.
    session.execute(
        select(Schedule.id).where(Schedule.automation_id == automation_id).with_for_update()
    )
    session.execute(
        update(Schedule)
        .where(Schedule.automation_id == automation_id)
        .values(enabled=False, completed_reason="automation deleted")
    )
    cancelled = cancel_runs(session, Execution.automation_id == automation_id, AUTOMATION_DELETED)
    audit(
        session,
        actor,
        AuditAction.DELETE,
        AuditTarget.AUTOMATION,
        automation_id,
        cancelled=cancelled,
    )
    return cancelled


# --- schedules -------------------------------------------------------------------


def _schedule_values(data: ScheduleDefinition) -> dict[str, Any]:
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
    }


def _arm(schedule: Schedule, timing: Timing, now: datetime) -> None:
    """Point next_run_at at the first slot from now on (never replaying the past)."""
    next_run_at, reason = initial_next_run_at(timing, now)
    schedule.next_run_at = next_run_at
    schedule.completed_reason = reason
    if next_run_at is None:
        schedule.enabled = False


def create_schedule(
    session: Session, automation_id: uuid.UUID, data: ScheduleDefinition, *, actor: str
) -> Schedule:
    """A new schedule; an interval without start_at counts from now (its created_at)."""
    now = db_now(session)
    get_automation(session, automation_id)
    schedule = Schedule(
        automation_id=automation_id, enabled=data.enabled, created_at=now, **_schedule_values(data)
    )
    if data.enabled:
        _arm(schedule, data.timing.anchored(now), now)
    session.add(schedule)
    session.flush()
    audit(
        session, actor, AuditAction.CREATE, AuditTarget.SCHEDULE, schedule.id, **_describe(schedule)
    )
    return schedule


def get_schedule(session: Session, schedule_id: uuid.UUID) -> Schedule:
    schedule = session.get(Schedule, schedule_id)
    if schedule is None:
        raise NotFound(f"schedule {schedule_id} does not exist (or was deleted)")
    return schedule


def _lock_schedule(session: Session, schedule_id: uuid.UUID) -> Schedule:
    """The schedule, row-locked: a dispatch of it in progress commits first, so every
    run it inserted is seen here, and no dispatch starts until this transaction ends."""
    schedule = session.get(Schedule, schedule_id, with_for_update=True)
    if schedule is None:
        raise NotFound(f"schedule {schedule_id} does not exist (or was deleted)")
    return schedule


def update_schedule(
    session: Session, schedule_id: uuid.UUID, data: ScheduleDefinition, *, actor: str
) -> Schedule:
    """New timing and policies; an interval without start_at keeps counting from creation."""
    schedule = _lock_schedule(session, schedule_id)
    now = db_now(session)
    new = {**_schedule_values(data), "enabled": data.enabled}
    changed = changes(schedule, new)
    for key, value in new.items():
        setattr(schedule, key, value)
    schedule.completed_reason = None
    # Runs queued for the old timing would fire at the old times; the next tick
    # dispatches the new timing's slots from now on.
    withdrawn = _withdraw_future(session, schedule, now)
    if data.enabled:
        _arm(schedule, data.timing.anchored(schedule.created_at), now)
    details = {"withdrawn": withdrawn, "changed": changed, **_describe(schedule)}
    audit(session, actor, AuditAction.EDIT, AuditTarget.SCHEDULE, schedule_id, **details)
    return schedule


def set_schedule_enabled(
    session: Session, schedule_id: uuid.UUID, enabled: bool, *, actor: str
) -> Schedule:
    """Pause or resume.

    Pausing withdraws the runs of slots after now that have not started; runs of
    earlier slots go on. Resuming starts from the first slot at or after now: the
    pause is not replayed.
    """
    schedule = _lock_schedule(session, schedule_id)
    get_automation(session, schedule.automation_id)
    now = db_now(session)
    withdrawn = 0
    if enabled:
        schedule.enabled = True
        schedule.completed_reason = None
        _arm(schedule, parse_timing(spec_of(schedule)), now)
    else:
        schedule.enabled = False
        withdrawn = _withdraw_future(session, schedule, now)
    action = AuditAction.RESUME if enabled else AuditAction.PAUSE
    audit(session, actor, action, AuditTarget.SCHEDULE, schedule_id, withdrawn=withdrawn)
    return schedule


def delete_schedule(session: Session, schedule_id: uuid.UUID, *, actor: str) -> int:
    """Delete the schedule; its open runs, queued or running, are cancelled (history stays).

    Returns how many were cancelled.
    """
    schedule = _lock_schedule(session, schedule_id)
    cancelled = cancel_runs(session, Execution.schedule_id == schedule_id, SCHEDULE_DELETED)
    details = {"cancelled": cancelled, **_describe(schedule)}
    audit(session, actor, AuditAction.DELETE, AuditTarget.SCHEDULE, schedule_id, **details)
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


def create_manual_execution(session: Session, automation_id: uuid.UUID, *, actor: str) -> Execution:
    """A run outside any schedule ("Run now", "Test run"); the caller sends it after commit."""
    automation = get_automation(session, automation_id)
    now = db_now(session)
    execution = Execution(
        automation_id=automation_id,
        schedule_id=None,
        trigger=Trigger.MANUAL,
        scheduled_for=now,
        status=ExecutionStatus.QUEUED,
        total_steps=len(automation.steps),
        available_at=now,
    )
    session.add(execution)
    session.flush()
    audit(
        session,
        actor,
        AuditAction.RUN_NOW,
        AuditTarget.AUTOMATION,
        automation_id,
        execution_id=str(execution.id),
    )
    return execution


def get_execution(session: Session, execution_id: uuid.UUID) -> Execution:
    execution = session.get(Execution, execution_id)
    if execution is None:
        raise NotFound(f"execution {execution_id} does not exist")
    return execution


def cancel_execution(session: Session, execution_id: uuid.UUID, *, actor: str) -> Execution:
    """Cancel a queued or running execution; a running worker stops before its next step.

    The step at the agent, if any, is closed now and its answer is not recorded.
    """
    execution = get_execution(session, execution_id)
    cancelled = cancel_runs(session, Execution.id == execution_id, f"cancelled by {actor}")
    session.refresh(execution)
    if not cancelled:
        raise InvalidState(
            f"only queued or running executions can be cancelled (this one is {execution.status})"
        )
    audit(session, actor, AuditAction.CANCEL, AuditTarget.EXECUTION, execution_id)
    return execution


def retry_execution(
    session: Session, execution_id: uuid.UUID, *, actor: str
) -> tuple[Execution, int]:
    """Re-open a failed execution at the step that failed; returns it and its retry budget.

    The same row runs again, so a slot still has exactly one execution and the
    agent sees the same Idempotency-Key for each step.
    """
    execution = get_execution(session, execution_id)
    if execution.status not in (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
        raise InvalidState(
            f"only failed or cancelled executions can be retried (this one is {execution.status})"
        )
    automation = get_automation(session, execution.automation_id)
    if execution.schedule_id is not None and execution.status == ExecutionStatus.FAILED:
        session.execute(
            update(Schedule)
            .where(Schedule.id == execution.schedule_id)
            .values(run_count=Schedule.run_count - 1, failure_count=Schedule.failure_count - 1)
        )
    execution.status = ExecutionStatus.QUEUED
    execution.finished_at = None
    execution.available_at = func.now()
    audit(session, actor, AuditAction.RETRY, AuditTarget.EXECUTION, execution_id)
    return execution, automation.max_retries
