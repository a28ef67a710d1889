"""What a person does to executions in the database: start one now, cancel, retry.

Every function takes the acting person and reaches only their workspace's rows; the
role check and the audit row are the caller's (`service.executions`), and so is the
run's message, sent once the transaction has committed. Functions take a session and
never commit.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.access import Actor
from core.errors import InvalidState, NotFound, QuotaExceeded
from core.run_input import RunInput
from core.vocabulary import ExecutionStatus, Permission, Trigger
from db.automations import live_automation
from db.models import Execution, Schedule
from db.runs import RunMessage, cancel_executions
from db.session import db_now
from db.workspaces import authorize, quotas


def create_manual_execution(
    session: Session,
    automation_id: uuid.UUID,
    *,
    actor: Actor,
    run_input: RunInput | None = None,
    trigger: Trigger = Trigger.MANUAL,
    schedule_id: uuid.UUID | None = None,
) -> Execution:
    """A queued run outside any timing ("Run now", "Test run", an API call, a webhook)
    with its input (already parsed: `core.run_input`), within the runs-a-minute quota.

    A schedule's "Run now" gives its `schedule_id` (the schedule's automation's): the run is
    the schedule's, in its counters and filters, but takes none of its slots (the slot key
    leaves trigger `manual` out) and no overlap policy holds it back.
    """
    automation = live_automation(session, automation_id, actor=actor)
    now = db_now(session)
    within_run_quota(session, actor.workspace_id, now)
    execution = Execution(
        automation_id=automation_id,
        workspace_id=actor.workspace_id,
        schedule_id=schedule_id,
        trigger=trigger,
        scheduled_for=now,
        status=ExecutionStatus.QUEUED,
        total_steps=len(automation.steps),
        available_at=now,
        input=run_input,
    )
    session.add(execution)
    session.flush()
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


def _execution(session: Session, actor: Actor, execution_id: uuid.UUID) -> Execution:
    execution = session.get(Execution, execution_id)
    if execution is None or execution.workspace_id != actor.workspace_id:
        raise NotFound(f"execution {execution_id} does not exist")
    return execution


def get_execution(session: Session, execution_id: uuid.UUID, *, actor: Actor) -> Execution:
    """The actor's workspace's execution, for a reader (READ checked); NotFound otherwise."""
    authorize(session, actor, Permission.READ)
    return _execution(session, actor, execution_id)


def cancel_execution(session: Session, execution_id: uuid.UUID, *, actor: Actor) -> Execution:
    """Cancel a queued or running execution; a running worker stops before its next step.

    The step at the agent, if any, is closed now and its answer is not recorded.
    """
    execution = _execution(session, actor, execution_id)
    cancelled = cancel_executions(
        session, Execution.id == execution_id, f"cancelled by {actor.name}"
    )
    session.refresh(execution)
    if not cancelled:
        raise InvalidState(
            f"only queued or running executions can be cancelled (this one is {execution.status})"
        )
    return execution


def retry_execution(session: Session, execution_id: uuid.UUID, *, actor: Actor) -> RunMessage:
    """Re-open a failed execution at the step that failed; returns the message to send
    once the transaction commits.

    The same row runs again, so a slot still has exactly one execution and the
    agent sees the same Idempotency-Key for each step.
    """
    execution = _execution(session, actor, execution_id)
    if execution.status not in (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
        raise InvalidState(
            f"only failed or cancelled executions can be retried (this one is {execution.status})"
        )
    automation = live_automation(session, execution.automation_id, actor=actor)
    if execution.schedule_id is not None and execution.status == ExecutionStatus.FAILED:
        session.execute(
            update(Schedule)
            .where(Schedule.id == execution.schedule_id)
            .values(run_count=Schedule.run_count - 1, failure_count=Schedule.failure_count - 1)
        )
    execution.status = ExecutionStatus.QUEUED
    # The run's duration counts from the retry's start (the claim stamps it), not across
    # the idle time before a person pressed Retry; each earlier attempt keeps its own
    # times on its step runs, which the execution page's waterfall shows.
    execution.started_at = None
    execution.finished_at = None
    execution.available_at = func.now()
    return RunMessage.start(
        execution_id, max_retries=automation.max_retries, urgent=automation.urgent
    )
