"""What the dashboard (and scripts) do to runs and queues, through the workers' own paths.

Each action commits its database change first and only then sends a message,
so a worker always finds the row it is told about. Every action takes the acting
person; the `db` layer checks their role in their workspace before anything is
written, and the queue actions (admins only) touch only the dead letters of that
workspace's runs (and of the deployment's own jobs), each one audited.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime

from sqlalchemy.orm import Session

from core.access import Actor
from core.errors import InvalidState, NotFound
from core.limits import MAX_BULK
from core.run_input import RunInput
from core.vocabulary import AuditAction, AuditTarget, ExecutionStatus, Permission
from db import backfill as backfills
from db import commands, idempotency, queries
from db.queries import ExecutionFilters
from db.runs import RunMessage
from db.session import session_scope
from db.workspaces import audit, authorize
from tasks import queues
from tasks.actors import dispatch
from tasks.send import send_run, send_runs
from tasks.workers import WorkerInfo

RUN_ACTOR = "run_execution"


def run_now(
    automation_id: uuid.UUID,
    *,
    actor: Actor,
    run_input: RunInput | None = None,
    idempotency_key: tuple[str, str] | None = None,
) -> uuid.UUID:
    """Start a manual run of the automation now, with its input; returns the execution id.

    `idempotency_key` (the API's key and the request's fingerprint): a repeat of the same
    request returns the first run and starts nothing (db/idempotency.py). A repeat
    sends no message: the first call sent it, and a message lost after that commit is
    sent again by housekeeping, as for any queued run.
    """
    with session_scope() as session:
        if idempotency_key is not None:
            made = idempotency.claim(session, actor, *idempotency_key)
            if made is not None:
                return made
        execution = commands.create_manual_execution(
            session, automation_id, actor=actor, run_input=run_input
        )
        if idempotency_key is not None:
            idempotency.remember(session, actor, idempotency_key[0], execution.id)
        automation = commands.get_automation(session, automation_id, actor=actor)
    send_run(RunMessage(execution.id, automation.max_retries, urgent=automation.urgent))
    return execution.id


def retry(execution_id: uuid.UUID, *, actor: Actor) -> None:
    """Run a failed or cancelled execution again from the step that did not succeed."""
    with session_scope() as session:
        message = commands.retry_execution(session, execution_id, actor=actor)
    send_run(message)


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
    messages = []
    with session_scope() as session:
        authorize(session, actor, Permission.RUN)
        if failed is None:
            return 0
        for row in queries.list_executions(session, failed, actor=actor, limit=limit).rows:
            try:
                messages.append(commands.retry_execution(session, row.id, actor=actor))
            except (InvalidState, NotFound):
                continue
    send_runs(messages)
    return len(messages)


def backfill(
    schedule_id: uuid.UUID, start: datetime | None, end: datetime | None, *, actor: Actor
) -> backfills.Backfilled:
    """Run the schedule's slots in `[start, end)` that have no run yet (`db.backfill`)."""
    with session_scope() as session:
        done = backfills.backfill(session, schedule_id, start, end, actor=actor)
    send_runs(done.created)
    return done


def cancel(execution_id: uuid.UUID, *, actor: Actor) -> None:
    """Cancel a queued or running execution (a running one stops before its next step)."""
    with session_scope() as session:
        commands.cancel_execution(session, execution_id, actor=actor)


def schedules_changed() -> None:
    """Dispatch now rather than at the next minute tick, so a slot due soon is not late."""
    dispatch.send()


# --- queues ------------------------------------------------------------------------------


def worker_processes(*, actor: Actor) -> list[WorkerInfo]:
    """The live worker processes, each showing only the runs in flight of the actor's
    workspace (its `running` count is the deployment's)."""
    found = queues.worker_processes()
    ids = {i for w in found for r in w.runs if (i := _uuid(r)) is not None}
    with session_scope() as session:
        mine = {str(i) for i in queries.executions_in_workspace(session, ids, actor=actor)}
    return [replace(w, runs=tuple(r for r in w.runs if r in mine)) for w in found]


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def dead_letters(queue: str, *, actor: Actor, limit: int | None = 100) -> list[queues.DeadLetter]:
    """The dead letters of `queue` the actor may see: their workspace's runs' and the
    deployment's own jobs' (dispatch, housekeeping: no workspace data in them)."""
    with session_scope() as session:
        return _visible(session, queues.dead_letters(queue, limit=limit), actor)


def _visible(
    session: Session, letters: list[queues.DeadLetter], actor: Actor
) -> list[queues.DeadLetter]:
    ids = {i for letter in letters if (i := queues.execution_of(letter)) is not None}
    mine = queries.executions_in_workspace(session, ids, actor=actor)
    return [
        letter
        for letter in letters
        if letter.actor != RUN_ACTOR or queues.execution_of(letter) in mine
    ]


def retry_dead_letter(queue: str, message_id: str, *, actor: Actor) -> bool:
    """Send a dead letter again (admins only, audited); False if it is gone or not theirs.

    A dead run is re-opened the way Retry on the Executions page does it, so it
    resumes at its failed step (a raw re-send would find it failed and do nothing).
    """
    with session_scope() as session:
        authorize(session, actor, Permission.MANAGE_QUEUES)
        letters = _visible(session, queues.dead_letters(queue, limit=None), actor)
        letter = next((m for m in letters if m.message_id == message_id), None)
        if letter is None or queues.take_dead_letter(queue, message_id) is None:
            return False
        execution_id = queues.execution_of(letter)
        reopened = None if execution_id is None else _reopen(session, execution_id, actor)
        audit(
            session,
            actor,
            AuditAction.RETRY_DEAD_LETTER,
            AuditTarget.QUEUE if execution_id is None else AuditTarget.EXECUTION,
            execution_id or actor.workspace_id,
            queue=queue,
            message_id=message_id,
            job=letter.actor,
        )
    if reopened is not None:
        send_run(reopened)
    else:  # the deployment's own job, or a run already going again: a re-send is harmless
        queues.send_again(letter)
    return True


def _reopen(session: Session, execution_id: uuid.UUID, actor: Actor) -> RunMessage | None:
    try:
        return commands.retry_execution(session, execution_id, actor=actor)
    except (InvalidState, NotFound):
        return None


def purge_dead_letters(queue: str, *, actor: Actor) -> int:
    """Delete the dead letters of `queue` the actor sees (admins only, audited); returns how
    many. Other workspaces' dead letters stay."""
    return _remove_visible(queue, None, actor=actor)


def remove_dead_letter(queue: str, message_id: str, *, actor: Actor) -> bool:
    """Delete one dead letter the actor sees (admins only, audited); False if gone or not theirs."""
    return _remove_visible(queue, message_id, actor=actor) > 0


def _remove_visible(queue: str, message_id: str | None, *, actor: Actor) -> int:
    """Delete the dead letters of `queue` the actor sees (one, or all with None); audited."""
    with session_scope() as session:
        authorize(session, actor, Permission.MANAGE_QUEUES)
        letters = _visible(session, queues.dead_letters(queue, limit=None), actor)
        ids = [m.message_id for m in letters if message_id in (None, m.message_id)]
        if not ids and message_id is not None:
            return 0
        purged = queues.remove_dead_letters(queue, ids)
        details = {} if message_id is None else {"message_id": message_id}
        audit(
            session,
            actor,
            AuditAction.PURGE_DEAD_LETTERS,
            AuditTarget.QUEUE,
            actor.workspace_id,
            queue=queue,
            purged=purged,
            **details,
        )
    return purged
