"""Executions: start one now, replay one with edited input, retry, retry the failed ones of
a filter, cancel (one, or the open ones of a filter).

Each public function is one unit of work (`service.unit`): the RUN role checked first,
the change made (`db.executions`) and audited, and the run's message sent only once the
transaction has committed, so a worker always finds the row it is told about.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from functools import partial
from typing import Any

from core.access import Actor
from core.errors import InvalidState, NotFound
from core.limits import MAX_BULK
from core.run_input import RunInput
from core.vocabulary import (
    OPEN_STATUSES,
    AuditAction,
    AuditTarget,
    ExecutionStatus,
    Permission,
    Trigger,
)
from db import automations, executions, queries
from db.queries import ExecutionFilters
from db.runs import RunMessage
from service.unit import Unit, unit_of_work
from tasks import queues, send


def run_now(
    automation_id: uuid.UUID,
    *,
    actor: Actor,
    run_input: RunInput | None = None,
    idempotency_key: tuple[str, str] | None = None,
) -> uuid.UUID:
    """Start a manual run of the automation now, with its input; returns the execution id.

    `idempotency_key` (the API's key and the request's fingerprint): a repeat of the same
    request returns the first run and starts nothing. A repeat sends no message: the
    first call sent it, and a message lost after that commit is sent again by
    housekeeping, as for any queued run.
    """
    with unit_of_work(actor, Permission.RUN) as unit:
        made, _ = unit.idempotent(idempotency_key, lambda: start_in(unit, automation_id, run_input))
    return made


def start_in(
    unit: Unit,
    automation_id: uuid.UUID,
    run_input: RunInput | None = None,
    *,
    trigger: Trigger = Trigger.MANUAL,
    schedule_id: uuid.UUID | None = None,
    **details: Any,
) -> uuid.UUID:
    """A run started now inside an open unit (of the schedule `schedule_id`, when a
    schedule's "Run now" starts it), audited (`details` go to the audit row, never the
    input itself: it may hold anything), sent after the commit; its id."""
    execution = executions.create_manual_execution(
        unit.session,
        automation_id,
        actor=unit.actor,
        run_input=run_input,
        trigger=trigger,
        schedule_id=schedule_id,
    )
    if schedule_id is not None:
        details["schedule_id"] = str(schedule_id)
    if trigger != Trigger.MANUAL:
        details["trigger"] = str(trigger)
    unit.audit(
        AuditAction.RUN_NOW,
        AuditTarget.AUTOMATION,
        automation_id,
        execution_id=str(execution.id),
        with_input=run_input is not None,
        **details,
    )
    automation = automations.live_automation(unit.session, automation_id, actor=unit.actor)
    message = RunMessage.start(
        execution.id, max_retries=automation.max_retries, urgent=automation.urgent
    )
    unit.after_commit(partial(send.send_run, message))
    return execution.id


def replay(execution_id: uuid.UUID, run_input: RunInput | None, *, actor: Actor) -> uuid.UUID:
    """Start a new manual run of an execution's automation with `run_input` (the run's own,
    edited); audited as a run started now, naming the execution it replays."""
    with unit_of_work(actor, Permission.RUN) as unit:
        found = queries.executions_by_id(unit.session, {execution_id}, actor=actor)
        if execution_id not in found:
            raise NotFound(f"execution {execution_id} does not exist (or was deleted)")
        automation_id = found[execution_id].automation_id
        return start_in(unit, automation_id, run_input, replay_of=str(execution_id))


def retry(execution_id: uuid.UUID, *, actor: Actor) -> None:
    """Run a failed or cancelled execution again from the step that did not succeed."""
    with unit_of_work(actor, Permission.RUN) as unit:
        unit.after_commit(partial(send.send_run, retry_in(unit, execution_id)))
        forget_dead_letters(unit, {execution_id})


def retry_in(unit: Unit, execution_id: uuid.UUID) -> RunMessage:
    """`retry` inside an open unit, audited; the message the caller sends after commit."""
    message = executions.retry_execution(unit.session, execution_id, actor=unit.actor)
    unit.audit(AuditAction.RETRY, AuditTarget.EXECUTION, execution_id)
    return message


def forget_dead_letters(unit: Unit, execution_ids: set[uuid.UUID]) -> None:
    """Once the unit commits, remove the dead letters of these retried runs: they start
    again (a run keeps one dead letter at most, for its last failure)."""

    def forget() -> None:
        queues.forget_dead_letters_of(execution_ids)

    unit.after_commit(forget, best_effort=True)


def failed_of(filters: ExecutionFilters) -> ExecutionFilters | None:
    """The failed runs among `filters` (None when its statuses leave out failed)."""
    if filters.statuses and ExecutionStatus.FAILED not in filters.statuses:
        return None
    return replace(filters, statuses=(ExecutionStatus.FAILED,))


def retry_failed(filters: ExecutionFilters, *, actor: Actor, limit: int = MAX_BULK) -> int:
    """Retry the failed runs matching `filters`, newest first, at most `limit`, each as
    `retry` does it (audited one by one); returns how many were queued again. A run of a
    deleted automation, or one retried meanwhile, is left out."""
    failed = failed_of(filters)
    messages: list[RunMessage] = []
    with unit_of_work(actor, Permission.RUN) as unit:
        if failed is None:
            return 0
        for row in queries.list_executions(unit.session, failed, actor=actor, limit=limit).rows:
            try:
                messages.append(retry_in(unit, row.id))
            except (InvalidState, NotFound):
                continue
        unit.after_commit(partial(send.send_runs, messages))
        forget_dead_letters(unit, {m.execution_id for m in messages})
    return len(messages)


def cancel(execution_id: uuid.UUID, *, actor: Actor) -> None:
    """Cancel a queued or running execution (a running one stops before its next step)."""
    with unit_of_work(actor, Permission.RUN) as unit:
        executions.cancel_execution(unit.session, execution_id, actor=actor)
        unit.audit(AuditAction.CANCEL, AuditTarget.EXECUTION, execution_id)


def open_of(filters: ExecutionFilters) -> ExecutionFilters | None:
    """The open (queued or running) runs among `filters` (None when its statuses leave
    both out)."""
    chosen = tuple(s for s in OPEN_STATUSES if not filters.statuses or s in filters.statuses)
    return replace(filters, statuses=chosen) if chosen else None


def cancel_open(filters: ExecutionFilters, *, actor: Actor, limit: int = MAX_BULK) -> int:
    """Cancel the open runs matching `filters`, at most `limit`, each as `cancel` does it
    (audited one by one); returns how many were cancelled. One that ended meanwhile is
    left out."""
    chosen = open_of(filters)
    cancelled = 0
    with unit_of_work(actor, Permission.RUN) as unit:
        if chosen is None:
            return 0
        rows = queries.executions_in_flight(unit.session, chosen, actor=actor, limit=limit)
        for row in rows:
            try:
                executions.cancel_execution(unit.session, row.id, actor=actor)
            except InvalidState:
                continue
            unit.audit(AuditAction.CANCEL, AuditTarget.EXECUTION, row.id)
            cancelled += 1
    return cancelled
