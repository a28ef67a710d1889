"""The queues as a workspace sees them: live worker processes and dead letters.

Redis holds every workspace's messages: a workspace sees only its own runs in flight
and its own runs' dead letters (and the deployment's own jobs', which hold no workspace
data). Retrying or removing a dead letter needs the admin role and is audited; a dead
run is re-opened the way Retry does it, and sent once the transaction has committed.
A run shows one dead letter, its newest, with the error and status its execution has in
the database (Redis keeps no traceback for a run that failed for good); a run retried
anywhere loses its dead letters (`service.executions.retry_in`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial

from core.access import Actor
from core.errors import InvalidState, NotFound
from core.vocabulary import AuditAction, AuditTarget, Permission
from db import queries
from db.runs import RunMessage
from service.executions import forget_dead_letters, retry_in
from service.unit import Unit, read, unit_of_work
from tasks import queues, send
from tasks.workers import WorkerInfo

RUN_ACTOR = "run_execution"


def worker_processes(*, actor: Actor) -> list[WorkerInfo]:
    """The live worker processes, each showing only the runs in flight of the actor's
    workspace (its `running` count is the deployment's)."""
    found = queues.worker_processes()
    ids = {i for w in found for r in w.runs if (i := _uuid(r)) is not None}
    mine = {str(i) for i in read(queries.executions_in_workspace, ids, actor=actor)}
    return [replace(w, runs=tuple(r for r in w.runs if r in mine)) for w in found]


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def dead_letters(queue: str, *, actor: Actor, limit: int | None = 100) -> list[queues.DeadLetter]:
    """The dead letters of `queue` the actor may see, newest first: their workspace's runs'
    (one a run, its newest, with the run's stored error and status) and the deployment's
    own jobs' (dispatch, housekeeping: no workspace data in them)."""
    letters = queues.dead_letters(queue, limit=None)
    runs = read(queries.executions_by_id, _runs_of(letters), actor=actor)
    shown: list[queues.DeadLetter] = []
    seen: set[uuid.UUID] = set()
    for letter in _visible(letters, set(runs)):
        execution_id = queues.execution_of(letter)
        if execution_id is not None:
            if execution_id in seen:
                continue  # an older attempt's, left by an earlier version
            seen.add(execution_id)
            run = runs[execution_id]
            letter = replace(letter, error=run.error or letter.error, run_status=run.status)
        shown.append(letter)
    return shown if limit is None else shown[:limit]


def _runs_of(letters: list[queues.DeadLetter]) -> set[uuid.UUID]:
    return {i for letter in letters if (i := queues.execution_of(letter)) is not None}


def _visible(letters: list[queues.DeadLetter], mine: set[uuid.UUID]) -> list[queues.DeadLetter]:
    return [
        letter
        for letter in letters
        if letter.actor != RUN_ACTOR or queues.execution_of(letter) in mine
    ]


def _visible_in(unit: Unit, queue: str) -> list[queues.DeadLetter]:
    """Every dead letter of `queue` the unit's actor sees."""
    letters = queues.dead_letters(queue, limit=None)
    mine = queries.executions_in_workspace(unit.session, _runs_of(letters), actor=unit.actor)
    return _visible(letters, mine)


def retry_dead_letter(queue: str, message_id: str, *, actor: Actor) -> bool:
    """Send a dead letter again (admins only, audited); False if it is gone or not theirs.

    A dead run is re-opened the way Retry on the Executions page does it, so it
    resumes at its failed step (a raw re-send would find it failed and do nothing).
    """
    with unit_of_work(actor, Permission.MANAGE_QUEUES) as unit:
        letter = next((m for m in _visible_in(unit, queue) if m.message_id == message_id), None)
        if letter is None or queues.take_dead_letter(queue, message_id) is None:
            return False
        execution_id = queues.execution_of(letter)
        reopened = None if execution_id is None else _reopen(unit, execution_id)
        unit.audit(
            AuditAction.RETRY_DEAD_LETTER,
            AuditTarget.QUEUE if execution_id is None else AuditTarget.EXECUTION,
            execution_id or actor.workspace_id,
            queue=queue,
            message_id=message_id,
            job=letter.actor,
        )
        if reopened is not None:
            unit.after_commit(partial(send.send_run, reopened))
            forget_dead_letters(unit, {reopened.execution_id})
        else:  # the deployment's own job, or a run already going again: a re-send is harmless
            unit.after_commit(partial(queues.send_again, letter))
    return True


def _reopen(unit: Unit, execution_id: uuid.UUID) -> RunMessage | None:
    try:
        return retry_in(unit, execution_id)
    except (InvalidState, NotFound):
        return None


def purge_dead_letters(queue: str, *, actor: Actor) -> int:
    """Delete the dead letters of `queue` the actor sees (admins only, audited); returns how
    many. Other workspaces' dead letters stay."""
    return _remove_visible(queue, None, actor=actor)


def clean_dead_letters(
    queue: str,
    *,
    actor: Actor,
    older_than: timedelta | None = None,
    statuses: Collection[str] = (),
) -> int:
    """Delete, in bulk, the dead letters of `queue` the actor sees that died more than
    `older_than` ago and (given `statuses`) whose run now has one of them: a run retried
    since and succeeded, say (admins only, audited with the criteria); returns how many.
    With neither, every one the actor sees, as `purge_dead_letters`."""
    cutoff = None if older_than is None else datetime.now(UTC) - older_than
    wanted = set(statuses)

    def matches(letter: queues.DeadLetter, status: str | None) -> bool:
        if cutoff is not None and letter.failed_at >= cutoff:
            return False
        return not wanted or status in wanted

    criteria: dict[str, object] = {}
    if older_than is not None:
        criteria["older_than_s"] = int(older_than.total_seconds())
    if wanted:
        criteria["statuses"] = sorted(wanted)
    return _remove_visible(queue, None, actor=actor, matches=matches, **criteria)


def remove_dead_letter(queue: str, message_id: str, *, actor: Actor) -> bool:
    """Delete one dead letter the actor sees (admins only, audited); False if gone or not theirs."""
    return _remove_visible(queue, message_id, actor=actor) > 0


def _remove_visible(
    queue: str,
    message_id: str | None,
    *,
    actor: Actor,
    matches: Callable[[queues.DeadLetter, str | None], bool] | None = None,
    **criteria: object,
) -> int:
    """Delete the dead letters of `queue` the actor sees (one, or all with None, or those
    `matches` keeps, given the run's status); audited with the `criteria`."""
    with unit_of_work(actor, Permission.MANAGE_QUEUES) as unit:
        letters = [m for m in _visible_in(unit, queue) if message_id in (None, m.message_id)]
        if matches is not None:
            runs = queries.executions_by_id(unit.session, _runs_of(letters), actor=unit.actor)

            def status(letter: queues.DeadLetter) -> str | None:
                run = (
                    runs.get(execution_id)
                    if (execution_id := queues.execution_of(letter))
                    else None
                )
                return None if run is None else run.status

            letters = [m for m in letters if matches(m, status(m))]
        ids = [m.message_id for m in letters]
        if not ids and message_id is not None:
            return 0
        purged = queues.remove_dead_letters(queue, ids)
        details: dict[str, object] = dict(criteria)
        if message_id is not None:
            details["message_id"] = message_id
        unit.audit(
            AuditAction.PURGE_DEAD_LETTERS,
            AuditTarget.QUEUE,
            actor.workspace_id,
            queue=queue,
            purged=purged,
            **details,
        )
    return purged
