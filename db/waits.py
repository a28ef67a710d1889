"""Waits resolved from outside a run: an agent's callback, a person's decision; open waits listed.

A waiting step run (`status = 'waiting'`, `wait_until`, `wait`: docs/RELIABILITY.md,
"Waits") is resolved here at most once. Every resolution takes the same order as the
engine's park: first `SELECT ... FROM executions WHERE id = :id FOR UPDATE`, then (a new
statement, so a snapshot taken after the lock) the step run's conditional update,
`WHERE status = 'waiting' AND wait_until > now()`: a second answer, a late one or one for a
run that was cancelled or ended changes nothing and says why (`WaitClosed`: 409,
`WaitGone`: 410). A resolved wait of a parked run (`waiting`) wakes it: `available_at =
now()`, and the run's message, returned here, is sent by the caller once the transaction
has committed (so the worker finds the resolution). A run that is running takes the
resolution in at its next read of its waits (`WAIT_POLL_S`); a queued one at its claim.

Every instant is the database's (`now()`). Functions take a session and never commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from core.access import Actor
from core.errors import Forbidden, NotFound
from core.text import json_bytes
from core.vocabulary import (
    FINAL_STATUSES,
    AuditAction,
    AuditTarget,
    ExecutionStatus,
    OnReject,
    Permission,
    Role,
    StepStatus,
)
from core.waits import (
    Callback,
    CallbackError,
    CallbackOutput,
    CallbackProgress,
    WaitClosed,
    WaitGone,
    WaitNotReady,
    WaitToken,
    role_phrase,
    waiting_on,
)
from db.models import Automation, Execution, StepRun
from db.runs import RunMessage
from db.session import db_now
from db.workspaces import audit, authorize

# The weakest role that may decide an approval, and the roles at least as strong.
_RANK = {Role.VIEWER: 0, Role.EDITOR: 1, Role.ADMIN: 2}
CALLBACK_ERROR_PREFIX = "the agent reported a failure: "


@dataclass(frozen=True)
class Resolution:
    """What a resolution did: the step run's status now, and the message that wakes its run
    (to send after commit; None when the run is not parked)."""

    execution_id: uuid.UUID
    step_key: str
    status: StepStatus
    wake: RunMessage | None


def _lock_run(
    session: Session, execution_id: uuid.UUID, workspace_id: uuid.UUID | None = None
) -> Any:
    """The run's row (of `workspace_id`, when given), locked for this transaction: the
    first lock of every resolution."""
    query = (
        select(
            Execution.id,
            Execution.status,
            Execution.attempt,
            Execution.automation_id,
            Execution.workspace_id,
        )
        .where(Execution.id == execution_id)
        .with_for_update()
    )
    if workspace_id is not None:
        query = query.where(Execution.workspace_id == workspace_id)
    return session.execute(query).first()


# What a resolution reads of a wait's step run.
_WAIT_ROW = (
    StepRun.id,
    StepRun.execution_id,
    StepRun.step_key,
    StepRun.item,
    StepRun.status,
    StepRun.wait,
    StepRun.wait_until,
    StepRun.finished_at,
)


def _step_row(session: Session, step_run_id: int) -> Any:
    return session.execute(select(*_WAIT_ROW).where(StepRun.id == step_run_id)).first()


def _closed_reason(run: Any, row: Any, now: datetime) -> None:
    """Raise why the wait `row` of `run` can no longer be resolved, if it cannot."""
    if run.status in FINAL_STATUSES:
        word = "cancelled" if run.status == ExecutionStatus.CANCELLED else f"ended ({run.status})"
        raise WaitClosed(f"the run was {word}: this answer changes nothing")
    if row.status != StepStatus.WAITING:
        ended_by_timeout = (
            row.wait_until is not None
            and row.finished_at is not None
            and row.finished_at >= row.wait_until
        )
        if ended_by_timeout:
            raise WaitGone(f"step {row.step_key!r} ended by its timeout before this answer")
        decided = (row.wait or {}).get("decided")
        by = f" by {decided['by']}" if isinstance(decided, dict) and decided.get("by") else ""
        raise WaitClosed(f"step {row.step_key!r} was already answered{by} (it is {row.status})")
    if row.wait_until is not None and now >= row.wait_until:
        raise WaitGone(
            f"step {row.step_key!r} waited until {row.wait_until.isoformat()}: too late, it "
            "ends by its timeout rule"
        )


_RESOLVE = text(
    f"""
    UPDATE step_runs
    SET status = :status, response_body = :body, error = :error, finished_at = now(),
        duration_ms = (extract(epoch FROM now() - started_at) * 1000)::int,
        wait = COALESCE(wait, '{{}}'::jsonb) || CAST(:wait AS jsonb)
    WHERE id = :id AND status = '{StepStatus.WAITING}' AND wait_until > now()
    RETURNING id
    """
)
_PROGRESS = text(
    f"""
    UPDATE step_runs SET wait = COALESCE(wait, '{{}}'::jsonb) || CAST(:wait AS jsonb)
    WHERE id = :id AND status = '{StepStatus.WAITING}' AND wait_until > now()
    RETURNING id
    """
)


def _wake(session: Session, run: Any) -> RunMessage | None:
    """Wake a parked run (`available_at = now()`, its wake-up sent: housekeeping's horizon
    pass sends no other, and a far wake-up its park did not send is never sent); the message
    to send after commit, or None when the run is not parked (a running coordinator reads
    its waits itself)."""
    if run.status != ExecutionStatus.WAITING:
        return None
    session.execute(
        update(Execution)
        .where(Execution.id == run.id, Execution.status == ExecutionStatus.WAITING)
        .values(available_at=func.now(), wake_sent_at=func.now())
    )
    automation = session.execute(
        select(Automation.max_retries, Automation.urgent).where(Automation.id == run.automation_id)
    ).one()
    # A wake is neither a try nor a recovery: the message carries the retries the run had
    # spent (each claim before this one but the first, as housekeeping's re-send of a
    # wake-up counts them), so waking spends none.
    return RunMessage.wake(
        run.id,
        max_retries=automation.max_retries,
        retries=max(run.attempt - 1, 0),
        delay_ms=0,
        urgent=automation.urgent,
    )


def _resolve_row(
    session: Session,
    run: Any,
    row: Any,
    *,
    status: StepStatus,
    body: str | None,
    error: str | None,
    wait: dict[str, Any],
) -> Resolution:
    done = session.execute(
        _RESOLVE,
        {
            "id": row.id,
            "status": str(status),
            "body": body,
            "error": error,
            "wait": json_bytes(wait).decode(),
        },
    ).first()
    if done is None:  # taken meanwhile (it cannot be while we hold the run, but say so)
        _closed_reason(run, _step_row(session, row.id) or row, db_now(session))
        raise WaitClosed(f"step {row.step_key!r} was already answered")
    return Resolution(run.id, row.step_key, status, _wake(session, run))


def resolve(session: Session, token: WaitToken, callback: Callback) -> Resolution:
    """An async step's callback: its output (the step succeeds), its error (it fails) or
    its progress (kept on the row; the wait stays open), for the step run the (opened,
    callback) `token` names. WaitGone past the step's deadline or the token's expiry,
    WaitClosed once answered or when its run was cancelled or ended; nothing written then."""
    found = _step_row(session, token.step_run_id)
    if found is None:
        raise WaitGone("this step's run no longer exists (it was deleted)")
    run = _lock_run(session, found.execution_id)
    row = _step_row(session, token.step_run_id)  # read again, under the run's lock
    if run is None or row is None:
        raise WaitGone("this step's run no longer exists (it was deleted)")
    if row.status == StepStatus.RUNNING and run.status not in FINAL_STATUSES:
        # Its call is still at the agent, or the 202 just came and is being recorded.
        raise WaitNotReady(
            f"step {row.step_key!r} is not waiting yet (its call's 202 is being recorded): "
            "send the callback again in a second"
        )
    if (row.wait or {}).get("kind") != "async":
        raise WaitClosed(f"step {row.step_key!r} does not wait for a callback")
    now = db_now(session)
    if token.expired(now) and row.status == StepStatus.WAITING and run.status not in FINAL_STATUSES:
        raise WaitGone("this callback URL has expired: the step ends by its timeout rule")
    _closed_reason(run, row, now)
    if isinstance(callback, CallbackProgress):
        progress = {
            "progress": callback.progress,
            "note": callback.note,
            "progress_at": now.isoformat(),
        }
        kept = session.execute(
            _PROGRESS, {"id": row.id, "wait": json_bytes(progress).decode()}
        ).first()
        if kept is None:
            raise WaitClosed(f"step {row.step_key!r} was already answered")
        return Resolution(run.id, row.step_key, StepStatus.WAITING, None)
    answered = {"answered_at": now.isoformat()}
    if isinstance(callback, CallbackOutput):
        body = json_bytes(callback.output).decode()
        return _resolve_row(
            session, run, row, status=StepStatus.SUCCEEDED, body=body, error=None, wait=answered
        )
    assert isinstance(callback, CallbackError)
    return _resolve_row(
        session,
        run,
        row,
        status=StepStatus.FAILED,
        body=None,
        error=CALLBACK_ERROR_PREFIX + callback.error,
        wait=answered,
    )


def decide(
    session: Session,
    actor: Actor,
    execution_id: uuid.UUID,
    step_key: str,
    approved: bool,
    comment: str | None = None,
) -> Resolution:
    """A person's decision on the approval step `step_key` of a run of their workspace:
    approved, the step succeeds with `{"approved": true, "by", "comment"}`; rejected, it
    fails or is skipped (its `on_reject`). Their role must be at least the step's (Forbidden,
    an inbound webhook never may); audited (APPROVE / REJECT, on the execution, with the step
    and the comment) in this transaction. NotFound for another workspace's run or a step
    that never waited for approval; WaitClosed / WaitGone as `resolve`; nothing written
    then. `comment` is checked by the caller (`core.waits.decision_comment`)."""
    if actor.webhook_id is not None:
        raise Forbidden("a webhook may not decide approvals")
    role = authorize(session, actor, Permission.READ)
    if _RANK[role] < _RANK[Role.EDITOR]:  # no approval is a viewer's to decide
        raise Forbidden(f"{role_phrase(role)} may not decide approvals: an editor or an admin may")
    run = _lock_run(session, execution_id, actor.workspace_id)
    if run is None:
        raise NotFound(f"execution {execution_id} does not exist")
    row = session.execute(
        select(*_WAIT_ROW)
        .where(StepRun.execution_id == execution_id, StepRun.step_key == step_key)
        .where(StepRun.item.is_(None))
        .order_by(StepRun.id.desc())
        .limit(1)
    ).first()
    if row is None or (row.wait or {}).get("kind") != "approval":
        raise NotFound(f"this run has no approval step {step_key!r} waiting or decided")
    needed = Role((row.wait or {}).get("role") or Role.EDITOR)
    if _RANK[role] < _RANK[needed]:
        raise Forbidden(
            f"step {step_key!r} needs approval by {role_phrase(needed)}: "
            f"{role_phrase(role)} may not decide it"
        )
    now = db_now(session)
    _closed_reason(run, row, now)
    decided = {"by": actor.name, "at": now.isoformat(), "approved": approved, "comment": comment}
    if approved:
        status, error = StepStatus.SUCCEEDED, None
        body: str | None = json_bytes(
            {"approved": True, "by": actor.name, "comment": comment}
        ).decode()
    else:
        skip = (row.wait or {}).get("on_reject") == OnReject.SKIP
        status = StepStatus.SKIPPED if skip else StepStatus.FAILED
        body = None
        error = f"rejected by {actor.name}" + (f": {comment}" if comment else "")
    resolution = _resolve_row(
        session, run, row, status=status, body=body, error=error, wait={"decided": decided}
    )
    audit(
        session,
        actor,
        AuditAction.APPROVE if approved else AuditAction.REJECT,
        AuditTarget.EXECUTION,
        execution_id,
        step=step_key,
        comment=comment,
    )
    return resolution


@dataclass(frozen=True)
class OpenWait:
    """A step of a run of the workspace that waits now, and on whom."""

    execution_id: uuid.UUID
    automation_id: uuid.UUID
    automation_name: str
    run_status: str
    step_key: str
    item: int | None
    kind: str
    since: datetime
    until: datetime | None
    waiting_on: str
    progress: int | None
    note: str | None
    role: str | None  # an approval's: the weakest role that may decide it
    message: str | None  # an approval's rendered message, as text


def open_waits(session: Session, *, actor: Actor, limit: int = 200) -> list[OpenWait]:
    """The open waits of the actor's workspace (of runs not ended), soonest deadline first."""
    authorize(session, actor, Permission.READ)
    rows = session.execute(
        select(
            StepRun.execution_id,
            StepRun.step_key,
            StepRun.item,
            StepRun.started_at,
            StepRun.wait_until,
            StepRun.wait,
            Execution.automation_id,
            Execution.status.label("run_status"),
            Automation.name,
        )
        .join(Execution, Execution.id == StepRun.execution_id)
        .join(Automation, Automation.id == Execution.automation_id)
        .where(
            StepRun.status == StepStatus.WAITING,
            Execution.workspace_id == actor.workspace_id,
            Execution.status.not_in(FINAL_STATUSES),
        )
        .order_by(StepRun.wait_until.asc().nulls_last(), StepRun.id)
        .limit(limit)
    ).all()
    return [_open_wait(row) for row in rows]


def _open_wait(row: Any) -> OpenWait:
    wait = row.wait or {}
    progress = wait.get("progress")
    note = wait.get("note")
    message = wait.get("message")
    return OpenWait(
        execution_id=row.execution_id,
        automation_id=row.automation_id,
        automation_name=row.name,
        run_status=row.run_status,
        step_key=row.step_key,
        item=row.item,
        kind=str(wait.get("kind") or ""),
        since=row.started_at,
        until=row.wait_until,
        waiting_on=waiting_on(wait, row.wait_until),
        progress=progress if isinstance(progress, int) else None,
        note=note if isinstance(note, str) else None,
        role=str(wait.get("role") or Role.EDITOR) if wait.get("kind") == "approval" else None,
        message=message if isinstance(message, str) else None,
    )
