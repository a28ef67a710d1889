"""Everything a person changes: automations, schedules, and actions on executions.

Automations are validated completely before the first write; schedules arrive
already parsed (`core.schedule.parse_schedule`), so a rejected input never reaches
the database. Every function takes the acting person (`core.access.Actor`), checks
their role in their workspace first (`db.workspaces.authorize`) and reaches only
that workspace's rows: another workspace's id reads as "does not exist". Every
change records who did what in the audit log. Functions take a session and never
commit.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from core.access import Actor
from core.automation import AutomationInput, redact_url, validate_automation
from core.backfill import pause_note
from core.errors import InvalidState, NotFound, QuotaExceeded
from core.run_input import RunInput
from core.schedule import ScheduleDefinition, initial_next_run_at
from core.secrets import new_signing_secret
from core.settings import get_settings
from core.timing import Timing, parse_timing, spec_of
from core.vocabulary import (
    AuditAction,
    AuditTarget,
    CompletedReason,
    ExecutionStatus,
    Permission,
    Trigger,
)
from db.models import Automation, Execution, HookTrigger, Schedule, WorkspaceSecret
from db.runs import AUTOMATION_DELETED, SCHEDULE_DELETED, RunMessage, cancel_runs
from db.session import db_now, rowcount
from db.workspaces import audit, authorize, quotas

__all__ = ["audit"]  # re-exported: callers that record their own actions


# --- automations ---------------------------------------------------------------


def automation_values(data: AutomationInput) -> dict[str, Any]:
    return {
        "name": data.name.strip(),
        "description": data.description,
        "agent_url": data.agent_url.strip(),
        "steps": [{"name": s.name.strip(), "message": s.message} for s in data.steps],
        "project_context": data.project_context,
        "step_timeout_s": data.step_timeout_s,
        "max_retries": data.max_retries,
        "owner_id": data.owner_id,
        "request_headers": dict(data.request_headers),
        "concurrency_limit": data.concurrency_limit,
        "rate_limit_per_s": data.rate_limit_per_s,
        "urgent": data.urgent,
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
    if name == "input":  # may hold anything: audited by its keys' count only
        return None if value is None else f"{len(value)} keys"
    if name == "agent_url" and isinstance(value, str):
        return redact_url(value)
    if name in _AUDIT_BY_SIZE:
        return f"{len(value)} steps" if name == "steps" else f"{len(value)} characters"
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def create_automation(session: Session, data: AutomationInput, *, actor: Actor) -> Automation:
    authorize(session, actor, Permission.EDIT)
    settings = get_settings()
    validate_automation(data, egress=settings.egress_policy())
    _within_quota(
        session,
        actor.workspace_id,
        Automation,
        quotas(session, actor.workspace_id).max_automations,
        "automations",
    )
    automation = Automation(
        **automation_values(data),
        workspace_id=actor.workspace_id,
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


def _within_quota(
    session: Session,
    workspace_id: uuid.UUID,
    model: type[Automation | Schedule],
    limit: int,
    what: str,
) -> None:
    stmt = select(func.count()).select_from(model).where(model.workspace_id == workspace_id)
    if model is Automation:
        stmt = stmt.where(Automation.archived_at.is_(None))
    if (session.scalar(stmt) or 0) >= limit:
        raise QuotaExceeded(
            f"this workspace has reached its quota of {limit} {what}: delete some, "
            "or ask an admin to raise the quota"
        )


def _automation(session: Session, workspace_id: uuid.UUID, automation_id: uuid.UUID) -> Automation:
    automation = session.get(Automation, automation_id)
    if (
        automation is None
        or automation.archived_at is not None
        or automation.workspace_id != workspace_id
    ):
        raise NotFound(f"automation {automation_id} does not exist (or was deleted)")
    return automation


def get_automation(session: Session, automation_id: uuid.UUID, *, actor: Actor) -> Automation:
    authorize(session, actor, Permission.READ)
    return _automation(session, actor.workspace_id, automation_id)


def rotate_signing_secret(session: Session, automation_id: uuid.UUID, *, actor: Actor) -> None:
    """A new signing secret for the automation's calls; the old one stops at once."""
    authorize(session, actor, Permission.EDIT)
    automation = _automation(session, actor.workspace_id, automation_id)
    automation.signing_secret = get_settings().secret_box().seal(new_signing_secret())
    audit(session, actor, AuditAction.ROTATE_SECRET, AuditTarget.AUTOMATION, automation_id)


def signing_secret(session: Session, automation_id: uuid.UUID, *, actor: Actor) -> str | None:
    """The automation's signing secret in clear, for its editor to give to the agent."""
    authorize(session, actor, Permission.EDIT)
    sealed = _automation(session, actor.workspace_id, automation_id).signing_secret
    return None if sealed is None else get_settings().secret_box().open(sealed)


def reseal_secrets(session: Session) -> int:
    """Seal every stored secret with the first key (key rotation); returns how many.

    The operator's command (`stepwise reseal`), across every workspace: it reads no
    value out, only re-seals.
    """
    box = get_settings().secret_box()
    secrets = session.execute(
        select(
            WorkspaceSecret.workspace_id, WorkspaceSecret.name, WorkspaceSecret.sealed
        ).with_for_update()
    ).all()
    for workspace_id, name, value in secrets:
        session.execute(
            update(WorkspaceSecret)
            .where(WorkspaceSecret.workspace_id == workspace_id, WorkspaceSecret.name == name)
            .values(sealed=box.reseal(value))
        )
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
    hooks = session.execute(select(HookTrigger.id, HookTrigger.secret).with_for_update()).all()
    for hook_id, sealed in hooks:
        session.execute(
            update(HookTrigger).where(HookTrigger.id == hook_id).values(secret=box.reseal(sealed))
        )
    return len(rows) + len(secrets) + len(hooks)


def update_automation(
    session: Session, automation_id: uuid.UUID, data: AutomationInput, *, actor: Actor
) -> Automation:
    authorize(session, actor, Permission.EDIT)
    validate_automation(data, egress=get_settings().egress_policy())
    automation = _automation(session, actor.workspace_id, automation_id)
    new = automation_values(data)
    changed = changes(automation, new)
    for key, value in new.items():
        setattr(automation, key, value)
    audit(session, actor, AuditAction.EDIT, AuditTarget.AUTOMATION, automation.id, changed=changed)
    return automation


def delete_automation(session: Session, automation_id: uuid.UUID, *, actor: Actor) -> int:
    """Archive the automation, stop its schedules and cancel its open runs; returns cancelled.

    Queued and running runs alike: no step of the automation starts after this
    commits (a running one stops before its next step; see `runs.cancel_runs`).
    """
    authorize(session, actor, Permission.EDIT)
    automation = _automation(session, actor.workspace_id, automation_id)
    automation.archived_at = func.now()
    # Locked first, so that a dispatch in progress commits its runs before they are cancelled.
    session.execute(
        select(Schedule.id).where(Schedule.automation_id == automation_id).with_for_update()
    )
    session.execute(
        update(Schedule)
        .where(Schedule.automation_id == automation_id)
        .values(
            enabled=False, completed_reason=CompletedReason.AUTOMATION_DELETED, parked_error=None
        )
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
    authorize(session, actor, Permission.EDIT)
    now = db_now(session)
    _automation(session, actor.workspace_id, automation_id)
    _within_quota(
        session,
        actor.workspace_id,
        Schedule,
        quotas(session, actor.workspace_id).max_schedules,
        "schedules",
    )
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
    audit(
        session, actor, AuditAction.CREATE, AuditTarget.SCHEDULE, schedule.id, **_describe(schedule)
    )
    return schedule


def get_schedule(session: Session, schedule_id: uuid.UUID, *, actor: Actor) -> Schedule:
    authorize(session, actor, Permission.READ)
    schedule = session.get(Schedule, schedule_id)
    if schedule is None or schedule.workspace_id != actor.workspace_id:
        raise NotFound(f"schedule {schedule_id} does not exist (or was deleted)")
    return schedule


def _lock_schedule(session: Session, actor: Actor, schedule_id: uuid.UUID) -> Schedule:
    """The schedule, row-locked: a dispatch of it in progress commits first, so every
    run it inserted is seen here, and no dispatch starts until this transaction ends."""
    authorize(session, actor, Permission.EDIT)
    schedule = session.get(Schedule, schedule_id, with_for_update=True)
    if schedule is None or schedule.workspace_id != actor.workspace_id:
        raise NotFound(f"schedule {schedule_id} does not exist (or was deleted)")
    return schedule


def update_schedule(
    session: Session, schedule_id: uuid.UUID, data: ScheduleDefinition, *, actor: Actor
) -> Schedule:
    """New timing and policies; an interval without start_at keeps counting from creation."""
    schedule = _lock_schedule(session, actor, schedule_id)
    now = db_now(session)
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
    details = {"withdrawn": withdrawn, "changed": changed, **_describe(schedule)}
    audit(session, actor, AuditAction.EDIT, AuditTarget.SCHEDULE, schedule_id, **details)
    return schedule


def set_schedule_enabled(
    session: Session,
    schedule_id: uuid.UUID,
    enabled: bool,
    *,
    actor: Actor,
    note: str | None = None,
) -> Schedule:
    """Pause (with an optional note, kept with who paused and when) or resume.

    Pausing withdraws the runs of slots after now that have not started; runs of
    earlier slots go on. Resuming starts from the first slot at or after now: the
    pause is not replayed, and the note is cleared.
    """
    note = pause_note(note) if not enabled else None
    schedule = _lock_schedule(session, actor, schedule_id)
    _automation(session, actor.workspace_id, schedule.automation_id)
    now = db_now(session)
    withdrawn = 0
    if enabled:
        schedule.enabled = True
        schedule.completed_reason = schedule.parked_error = None
        _arm(schedule, parse_timing(spec_of(schedule)), now)
    else:
        schedule.enabled = False
        withdrawn = _withdraw_future(session, schedule, now)
    _mark_paused(schedule, None if enabled else actor, note, now)
    action = AuditAction.RESUME if enabled else AuditAction.PAUSE
    details: dict[str, Any] = {"withdrawn": withdrawn}
    if note is not None:
        details["note"] = note
    audit(session, actor, action, AuditTarget.SCHEDULE, schedule_id, **details)
    return schedule


def _mark_paused(schedule: Schedule, by: Actor | None, note: str | None, now: datetime) -> None:
    """Record who paused the schedule, when and why; `by` None clears it (resumed)."""
    schedule.paused_by = None if by is None else by.name
    schedule.paused_at = None if by is None else now
    schedule.pause_note = note


def delete_schedule(session: Session, schedule_id: uuid.UUID, *, actor: Actor) -> int:
    """Delete the schedule; its open runs, queued or running, are cancelled (history stays).

    Returns how many were cancelled.
    """
    schedule = _lock_schedule(session, actor, schedule_id)
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


def create_manual_execution(
    session: Session,
    automation_id: uuid.UUID,
    *,
    actor: Actor,
    run_input: RunInput | None = None,
    trigger: Trigger = Trigger.MANUAL,
    **details: Any,
) -> Execution:
    """A run outside any schedule ("Run now", "Test run", an API call, a webhook) with its
    input (already parsed: `core.run_input`); the caller sends it after commit.

    `details` go to the audit row (never the input itself: it may hold anything)."""
    authorize(session, actor, Permission.RUN)
    automation = _automation(session, actor.workspace_id, automation_id)
    now = db_now(session)
    within_run_quota(session, actor.workspace_id, now)
    execution = Execution(
        automation_id=automation_id,
        workspace_id=actor.workspace_id,
        schedule_id=None,
        trigger=trigger,
        scheduled_for=now,
        status=ExecutionStatus.QUEUED,
        total_steps=len(automation.steps),
        available_at=now,
        input=run_input,
    )
    session.add(execution)
    session.flush()
    if trigger != Trigger.MANUAL:
        details["trigger"] = str(trigger)
    audit(
        session,
        actor,
        AuditAction.RUN_NOW,
        AuditTarget.AUTOMATION,
        automation_id,
        execution_id=str(execution.id),
        with_input=run_input is not None,
        **details,
    )
    return execution


def within_run_quota(
    session: Session, workspace_id: uuid.UUID, now: datetime, adding: int = 1
) -> None:
    """QuotaExceeded unless `adding` more runs keep the workspace within its runs a minute."""
    limit = quotas(session, workspace_id).max_runs_per_minute
    recent = session.scalar(
        select(func.count())
        .select_from(Execution)
        .where(
            Execution.workspace_id == workspace_id,
            Execution.queued_at > now - timedelta(minutes=1),
        )
    )
    recent = recent or 0
    if recent + adding > limit:
        reached = (
            f"has reached its quota of {limit} runs per minute"
            if adding == 1
            else f"would pass its quota of {limit} runs per minute with {adding} more "
            f"({recent} in the last minute)"
        )
        raise QuotaExceeded(
            f"this workspace {reached}: try again in a minute, or ask an admin to raise the quota"
        )


def _execution(session: Session, workspace_id: uuid.UUID, execution_id: uuid.UUID) -> Execution:
    execution = session.get(Execution, execution_id)
    if execution is None or execution.workspace_id != workspace_id:
        raise NotFound(f"execution {execution_id} does not exist")
    return execution


def get_execution(session: Session, execution_id: uuid.UUID, *, actor: Actor) -> Execution:
    authorize(session, actor, Permission.READ)
    return _execution(session, actor.workspace_id, execution_id)


def cancel_execution(session: Session, execution_id: uuid.UUID, *, actor: Actor) -> Execution:
    """Cancel a queued or running execution; a running worker stops before its next step.

    The step at the agent, if any, is closed now and its answer is not recorded.
    """
    authorize(session, actor, Permission.RUN)
    execution = _execution(session, actor.workspace_id, execution_id)
    cancelled = cancel_runs(session, Execution.id == execution_id, f"cancelled by {actor.name}")
    session.refresh(execution)
    if not cancelled:
        raise InvalidState(
            f"only queued or running executions can be cancelled (this one is {execution.status})"
        )
    audit(session, actor, AuditAction.CANCEL, AuditTarget.EXECUTION, execution_id)
    return execution


def retry_execution(session: Session, execution_id: uuid.UUID, *, actor: Actor) -> RunMessage:
    """Re-open a failed execution at the step that failed; returns the message to send
    once the transaction commits.

    The same row runs again, so a slot still has exactly one execution and the
    agent sees the same Idempotency-Key for each step.
    """
    authorize(session, actor, Permission.RUN)
    execution = _execution(session, actor.workspace_id, execution_id)
    if execution.status not in (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
        raise InvalidState(
            f"only failed or cancelled executions can be retried (this one is {execution.status})"
        )
    automation = _automation(session, actor.workspace_id, execution.automation_id)
    if execution.schedule_id is not None and execution.status == ExecutionStatus.FAILED:
        session.execute(
            update(Schedule)
            .where(Schedule.id == execution.schedule_id)
            .values(run_count=Schedule.run_count - 1, failure_count=Schedule.failure_count - 1)
        )
    execution.status = ExecutionStatus.QUEUED
    # The run's duration counts from the retry's start (the claim stamps it), not across
    # the idle time before a person pressed Retry; each earlier attempt keeps its own
    # times on its step runs, which the run page's waterfall shows.
    execution.started_at = None
    execution.finished_at = None
    execution.available_at = func.now()
    audit(session, actor, AuditAction.RETRY, AuditTarget.EXECUTION, execution_id)
    return RunMessage.start(
        execution_id, max_retries=automation.max_retries, urgent=automation.urgent
    )
