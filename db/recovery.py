"""Recovery: runs whose message or worker was lost, sent again or given up; parked runs'
wake-ups sent when they come within the wake horizon; old history purged.

Housekeeping runs these every minute and each worker's heartbeat runs the lease
part (`tasks/periodic.py`). Functions take a session and never commit: the caller
owns the transaction.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import BigInteger, and_, case, cast, delete, func, or_, select, update
from sqlalchemy.orm import Session

from core.limits import MAX_RECOVERIES
from core.vocabulary import FINAL_STATUSES, ExecutionStatus, StepStatus
from db.models import Automation, Execution, Schedule, StepRun
from db.runs import LOST_STEP_ERROR, RunMessage
from db.session import locked_batch, rowcount

RECOVERIES_EXHAUSTED = (
    f"failed: housekeeping gave up after {MAX_RECOVERIES} recoveries beyond the run's "
    "retries; its worker kept stopping mid-run (killed, out of memory, or past its lease) "
    "or its message kept being lost"
)


WAIT_GIVEN_UP = "cancelled while it waited: housekeeping gave up on the run"


def stranded_executions(
    session: Session,
    *,
    requeue_after_s: int | None,
    resend_after_s: int,
    limit: int,
    gave_up: list[int] | None = None,
) -> list[RunMessage]:
    """Queued runs whose message should have arrived long ago, and runs whose lease expired.

    Postgres is the source of truth: a message lost to a flushed Redis, a killed
    worker or a dead connection is simply sent again (a duplicate claims nothing).
    A queued run is sent again `requeue_after_s` after it became available; a
    running one as soon as its lease expired (its worker stopped renewing it),
    then at most every `resend_after_s`. `available_at` records each re-send.
    With `requeue_after_s` None only expired leases are looked at.
    A parked run (`waiting`) whose `available_at` passed `requeue_after_s` ago lost its
    wake-up (Redis flushed, the message dropped) and is sent again like a lost queued run;
    the claim wakes it (a wake spends nothing: `db.claims`), and it is never given up.
    A run past its recovery bound is failed instead (`give_up_exhausted`): how many is
    appended to `gave_up` when given.
    """
    resent_lately = func.now() - timedelta(seconds=resend_after_s)
    stranded = and_(
        Execution.status == ExecutionStatus.RUNNING,
        Execution.lease_expires_at < func.now(),
        Execution.available_at < resent_lately,
    )
    recoverable = stranded
    if requeue_after_s is not None:
        long_ago = func.now() - timedelta(seconds=requeue_after_s)
        lost = and_(Execution.status == ExecutionStatus.QUEUED, Execution.available_at < long_ago)
        unwoken = and_(
            Execution.status == ExecutionStatus.WAITING, Execution.available_at < long_ago
        )
        recoverable = or_(lost, stranded)
        stranded = or_(lost, unwoken, stranded)
    failed = give_up_exhausted(session, recoverable, limit=limit)
    if gave_up is not None:
        gave_up.append(failed)
    batch = locked_batch(
        select(Execution.id)
        .where(stranded)
        .order_by(Execution.available_at)
        .limit(limit)
        .with_for_update(skip_locked=True),
        "stranded",
    )
    rows = session.execute(
        update(Execution)
        .where(Execution.id == batch.c.id)
        .values(
            available_at=func.now(),
            wake_sent_at=case(
                (Execution.status == ExecutionStatus.WAITING, func.now()),
                else_=Execution.wake_sent_at,
            ),
        )
        .returning(Execution.id, Execution.attempt, Execution.automation_id, Execution.status)
    ).all()
    if not rows:
        return []
    budgets = _budgets(session, rows)
    return [
        RunMessage.resend(
            r.id,
            max_retries=budgets[r.automation_id].max_retries,
            # A parked run's current claim has spent no try: only those before it did.
            attempts=r.attempt - 1 if r.status == ExecutionStatus.WAITING else r.attempt,
            urgent=budgets[r.automation_id].urgent,
        )
        for r in rows
    ]


def wakes_due(session: Session, *, horizon_s: int, limit: int) -> list[RunMessage]:
    """The wake-ups of parked runs whose `available_at` has come within `horizon_s`
    (WAKE_HORIZON_S) and whose wake-up was not sent yet, one batch of at most `limit`
    (`FOR UPDATE SKIP LOCKED`: two passes at once take different runs), each recorded as
    sent (`wake_sent_at`) so that the next pass sends it no more; the messages, delayed to
    each run's `available_at`, to send after commit.

    A park sends its own wake-up when it is within the horizon (`db.runs.park`), and a
    resolution wakes its run at once (`db.waits`), both recording it; so this sends only
    the wake-ups of waits that were far off when their run parked. A wake-up this sends and
    Redis then loses is sent again like any lost one (`stranded_executions`).
    """
    batch = locked_batch(
        select(Execution.id)
        .where(
            Execution.status == ExecutionStatus.WAITING,
            Execution.wake_sent_at.is_(None),
            Execution.available_at < func.now() + timedelta(seconds=horizon_s),
        )
        .order_by(Execution.available_at)
        .limit(limit)
        .with_for_update(skip_locked=True),
        "waking",
    )
    delay_ms = cast(
        func.greatest(
            0, func.ceil(func.extract("epoch", Execution.available_at - func.now()) * 1000)
        ),
        BigInteger,
    )
    rows = session.execute(
        update(Execution)
        .where(Execution.id == batch.c.id)
        .values(wake_sent_at=func.now())
        .returning(
            Execution.id, Execution.attempt, Execution.automation_id, delay_ms.label("delay_ms")
        )
    ).all()
    if not rows:
        return []
    budgets = _budgets(session, rows)
    return [
        RunMessage.wake(
            r.id,
            max_retries=budgets[r.automation_id].max_retries,
            # A parked run's current claim has spent no try: only those before it did.
            retries=max(r.attempt - 1, 0),
            delay_ms=int(r.delay_ms),
            urgent=budgets[r.automation_id].urgent,
        )
        for r in rows
    ]


def _budgets(session: Session, rows: Any) -> dict[uuid.UUID, Any]:
    """The retry budget and urgency of each automation of `rows` (runs being sent again)."""
    return {
        a.id: a
        for a in session.execute(
            select(Automation.id, Automation.max_retries, Automation.urgent).where(
                Automation.id.in_({r.automation_id for r in rows})
            )
        )
    }


def give_up_exhausted(session: Session, stranded: Any, *, limit: int) -> int:
    """Fail the stranded runs (`stranded`: a condition on executions) already claimed
    MAX_RECOVERIES times more than their retries allow; returns how many.

    Each claim counts in `attempt`, and only a recovery (or a worker handing a run
    back at shutdown) claims a run past its retries, so a run that keeps killing or
    losing its worker ends here with the reason, counted on its schedule, instead of
    calling the agent again every minute forever. A run waiting its turn is never
    claimed, so waiting costs it nothing.
    """
    exhausted = locked_batch(
        select(Execution.id)
        .join(Automation, Automation.id == Execution.automation_id)
        .where(stranded, Execution.attempt >= Automation.max_retries + 1 + MAX_RECOVERIES)
        .limit(limit)
        .with_for_update(of=Execution, skip_locked=True),
        "exhausted",
    )
    ended = session.execute(
        update(Execution)
        .where(Execution.id == exhausted.c.id)
        .values(
            status=ExecutionStatus.FAILED,
            finished_at=func.now(),
            lease_expires_at=None,
            error=RECOVERIES_EXHAUSTED,
        )
        .returning(Execution.id, Execution.schedule_id)
    ).all()
    if not ended:
        return 0
    session.execute(
        update(StepRun)
        .where(
            StepRun.execution_id.in_([row.id for row in ended]),
            StepRun.status == StepStatus.RUNNING,
        )
        .values(status=StepStatus.FAILED, error=LOST_STEP_ERROR, finished_at=func.now())
    )
    session.execute(
        update(StepRun)
        .where(
            StepRun.execution_id.in_([row.id for row in ended]),
            StepRun.status == StepStatus.WAITING,
        )
        .values(status=StepStatus.CANCELLED, error=WAIT_GIVEN_UP, finished_at=func.now())
    )
    for row in ended:
        if row.schedule_id is not None:
            record_outcome(session, row.schedule_id, ExecutionStatus.FAILED)
    return len(ended)


def record_outcome(session: Session, schedule_id: uuid.UUID, status: ExecutionStatus) -> None:
    succeeded = 1 if status == ExecutionStatus.SUCCEEDED else 0
    failed = 1 if status == ExecutionStatus.FAILED else 0
    session.execute(
        update(Schedule)
        .where(Schedule.id == schedule_id)
        .values(
            run_count=Schedule.run_count + 1,
            success_count=Schedule.success_count + succeeded,
            failure_count=Schedule.failure_count + failed,
            last_status=status,
            last_run_at=func.now(),
        )
    )


def purge_history(session: Session, *, older_than_days: int, batch: int) -> int:
    """Delete one small batch of finished executions older than the retention age.

    Small batches keep each transaction short: no long lock on the table. The
    caller loops while a full batch was deleted.
    """
    cutoff = func.now() - timedelta(days=older_than_days)
    victims = locked_batch(
        select(Execution.id)
        .where(Execution.queued_at < cutoff, Execution.status.in_(FINAL_STATUSES))
        .limit(batch)
        .with_for_update(skip_locked=True),
        "victims",
    )
    return rowcount(session.execute(delete(Execution).where(Execution.id == victims.c.id)))
