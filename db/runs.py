"""An execution's life in the database: claim, steps, retry, end, recovery.

Every write a worker makes is fenced on `(status = 'running', attempt = <its
attempt>)`: a worker whose lease expired and whose execution was taken over, or
cancelled, finds zero rows and stops instead of overwriting newer state.
Functions take a session and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Integer,
    String,
    Text,
    Uuid,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from core.limits import MAX_RECOVERIES
from core.outcome import StepOutcome, parse_output
from core.schedule import decide_overlap
from core.vocabulary import (
    FINAL_STATUSES,
    OPEN_STATUSES,
    ExecutionStatus,
    FailureReport,
    OverlapDecision,
    OverlapPolicy,
    ScheduleKind,
    StepStatus,
    Trigger,
)
from db.models import Automation, Execution, Schedule, StepRun
from db.session import rowcount

LOST_STEP_ERROR = "the worker running this step stopped (killed or lost its lease)"
CANCELLED_STEP_ERROR = (
    "the run was cancelled while this step was at the agent; its answer is not recorded"
)
RECOVERIES_EXHAUSTED = (
    f"failed: housekeeping gave up after {MAX_RECOVERIES} recoveries beyond the run's "
    "retries; its worker kept stopping mid-run (killed, out of memory, or past its lease) "
    "or its message kept being lost"
)
AUTOMATION_DELETED = "cancelled: the automation was deleted"
SCHEDULE_DELETED = "cancelled: the schedule was deleted"
SKIP_REASONS = {
    OverlapDecision.SKIP: "skipped: the previous run was still running (overlap policy)",
    OverlapDecision.SUPERSEDED: "skipped: a later slot already started (overlap policy)",
}


# A slot's message is delivered this much before the slot, and the worker that takes
# it starts the run at the slot itself (`tasks.runner.accept`): the queue's hand-off
# of a delayed message (a few hundred milliseconds) then costs the start nothing.
START_AHEAD_MS = 1000


@dataclass(frozen=True)
class RunMessage:
    """A run to hand to the workers once the transaction that made it has committed."""

    execution_id: uuid.UUID
    max_retries: int
    retries: int = 0  # tries already spent, so a re-sent message keeps its retry budget
    delay_ms: int = 0  # from when the database decided it
    report: FailureReport | None = None  # the run failed for good: dead-letter this message
    # Deliver up to this much before `delay_ms` ends; the worker waits for the rest.
    ahead_ms: int = 0
    urgent: bool = False  # the automation's runs go to the urgent queue


@dataclass(frozen=True)
class Claim:
    """A running execution as its worker sees it."""

    execution_id: uuid.UUID
    attempt: int
    automation_id: uuid.UUID
    schedule_id: uuid.UUID | None
    scheduled_for: datetime
    owner_id: str
    workspace_id: uuid.UUID  # the run's: the worker acts for this workspace only
    agent_url: str
    signing_secret: str | None  # sealed: opened by the worker at call time only
    steps: list[dict[str, str]]
    project_context: str
    step_timeout_s: int
    first_step: int  # 1-based: the first step not yet succeeded
    previous_output: Any
    overlap_policy: OverlapPolicy | None = None  # None for a run outside any schedule
    request_headers: dict[str, str] = field(default_factory=dict)  # templates, no values
    concurrency_limit: int | None = None  # flow control (tasks/flow.py); None: no limit
    rate_limit_per_s: float | None = None
    urgent: bool = False
    input: dict[str, Any] | None = None  # the run's input, sent with every step

    @property
    def flow_controlled(self) -> bool:
        return self.concurrency_limit is not None or self.rate_limit_per_s is not None

    @property
    def total_steps(self) -> int:
        return len(self.steps)


ClaimResult = Claim | Literal["nothing", "skipped", "waiting", "early"]


def _fence(claim: Claim) -> Any:
    return and_(
        Execution.id == claim.execution_id,
        Execution.status == ExecutionStatus.RUNNING,
        Execution.attempt == claim.attempt,
    )


def _overlap(session: Session, execution: Any, policy: OverlapPolicy) -> OverlapDecision:
    """run / skip / wait for a scheduled execution (its claim row), serialised per schedule."""
    # An advisory lock, not a row lock on the schedule: the dispatcher's
    # FOR UPDATE SKIP LOCKED must never skip a schedule because a run is starting.
    session.execute(
        select(func.pg_advisory_xact_lock(func.hashtextextended(str(execution.schedule_id), 0)))
    )
    siblings = select(Execution.id).where(
        Execution.schedule_id == execution.schedule_id, Execution.id != execution.id
    )
    running = siblings.where(
        Execution.status == ExecutionStatus.RUNNING, Execution.lease_expires_at > func.now()
    )
    waiting = siblings.where(
        Execution.status == ExecutionStatus.QUEUED,
        Execution.scheduled_for < execution.scheduled_for,
        Execution.scheduled_for <= func.now(),
    )
    later_started = siblings.where(
        Execution.scheduled_for > execution.scheduled_for, Execution.started_at.is_not(None)
    )
    # Catch-up runs not started yet: they go first, one after another.
    backlog = waiting.where(Execution.trigger == Trigger.CATCHUP, Execution.attempt == 0)
    found = session.execute(
        select(running.exists(), waiting.exists(), later_started.exists(), backlog.exists())
    ).one()
    return decide_overlap(
        policy,
        running=found[0],
        waiting=found[1],
        later_started=found[2],
        backlog=found[3],
        catchup=execution.trigger == Trigger.CATCHUP,
    )


def _skip_for_overlap(session: Session, execution: Any, reason: str) -> None:
    session.execute(
        update(Execution)
        .where(Execution.id == execution.id, Execution.status == ExecutionStatus.QUEUED)
        .values(status=ExecutionStatus.SKIPPED, finished_at=func.now(), error=reason)
    )
    session.execute(
        update(Schedule)
        .where(Schedule.id == execution.schedule_id)
        .values(skipped_count=Schedule.skipped_count + 1)
    )


def cancel_runs(session: Session, where: Any, reason: str) -> int:
    """Cancel the open (queued or running) executions matching `where`; returns how many.

    A running one's worker finds its fence gone and stops before its next step; the
    step it has at the agent is closed at once, so nothing of a cancelled run stays
    running, and the answer, when it comes, is not recorded (`finish_step` is fenced
    on the step still running).
    """
    cancelled = session.scalars(
        update(Execution)
        .where(where, Execution.status.in_(OPEN_STATUSES))
        .values(
            status=ExecutionStatus.CANCELLED,
            finished_at=func.now(),
            lease_expires_at=None,
            error=reason,
        )
        .returning(Execution.id)
    ).all()
    if cancelled:
        session.execute(
            update(StepRun)
            .where(StepRun.execution_id.in_(cancelled), StepRun.status == StepStatus.RUNNING)
            .values(status=StepStatus.FAILED, error=CANCELLED_STEP_ERROR, finished_at=func.now())
        )
    return len(cancelled)


def _resume_point(session: Session, execution_id: uuid.UUID) -> tuple[int, Any]:
    """First step not yet succeeded, and the output of the step before it."""
    done = session.execute(
        select(StepRun.step_number, StepRun.response_body)
        .where(StepRun.execution_id == execution_id, StepRun.status == StepStatus.SUCCEEDED)
        .order_by(StepRun.step_number.desc())
        .limit(1)
    ).first()
    if done is None:
        return 1, None
    return done.step_number + 1, parse_output(done.response_body or "", truncated=False)


# What a claim reads, in one round trip and without ORM objects.
_CLAIM_READ = (
    select(
        Execution.id,
        Execution.status,
        Execution.attempt,
        Execution.lease_expires_at,
        Execution.schedule_id,
        Execution.scheduled_for,
        Execution.trigger,
        Execution.workspace_id,
        Execution.input,
        Automation.id.label("automation_id"),
        Automation.archived_at,
        Automation.owner_id,
        Automation.agent_url,
        Automation.signing_secret,
        Automation.steps,
        Automation.project_context,
        Automation.step_timeout_s,
        Automation.request_headers,
        Automation.concurrency_limit,
        Automation.rate_limit_per_s,
        Automation.urgent,
        Schedule.kind,
        Schedule.overlap_policy,
    )
    .join(Automation, Automation.id == Execution.automation_id)
    .outerjoin(Schedule, Schedule.id == Execution.schedule_id)
    .where(Execution.id == bindparam("id"))
)


def claim_execution(session: Session, execution_id: uuid.UUID, *, lease_s: int) -> ClaimResult:
    """Take a queued execution (or a running one whose lease expired) for this worker.

    The lease lasts `lease_s`; the worker's runner renews it while the run is in
    flight (`renew_leases`), so a killed worker's runs are free again `lease_s`
    after its last heartbeat, however long their steps' timeouts.

    Returns "nothing" when another worker has it or it is final (a duplicate
    message), "skipped"/"waiting" when the overlap policy says so.
    """
    row = session.execute(_CLAIM_READ, {"id": execution_id}).first()
    if row is None:
        return "nothing"
    execution = automation = row  # columns, not ORM objects: the hot path loads none
    if automation.archived_at is not None:
        # Deleting cancels every open run; this closes a run created in a race
        # with the delete, so that it is neither started nor taken over.
        cancel_runs(session, Execution.id == execution_id, AUTOMATION_DELETED)
        return "nothing"
    # A one-off schedule has one slot: nothing can overlap it.
    single = row.kind is None or row.kind == ScheduleKind.ONCE
    policy = None if single or row.overlap_policy is None else OverlapPolicy(row.overlap_policy)
    # Whether a lease has expired is the UPDATE's to say, on the database's clock.
    claimable = execution.status == ExecutionStatus.QUEUED or (
        execution.status == ExecutionStatus.RUNNING and execution.lease_expires_at is not None
    )
    if not claimable:
        return "nothing"
    # The overlap policy decides whether a slot starts; a retry of a run that
    # already started is that run going on, not a new slot.
    # A backfill (past slots a person asked for, `db.backfill`) is not held back by it.
    first_start = execution.attempt == 0 and execution.trigger != Trigger.BACKFILL
    if first_start and policy is not None and policy != OverlapPolicy.ALLOW:
        decision = _overlap(session, execution, policy)
        if decision in SKIP_REASONS:
            _skip_for_overlap(session, execution, SKIP_REASONS[decision])
            return "skipped"
        if decision == OverlapDecision.WAIT:
            return "waiting"
    claimed = session.execute(
        update(Execution)
        .where(
            Execution.id == execution_id,
            or_(
                Execution.status == ExecutionStatus.QUEUED,
                and_(
                    Execution.status == ExecutionStatus.RUNNING,
                    Execution.lease_expires_at < func.now(),
                ),
            ),
        )
        .values(
            status=ExecutionStatus.RUNNING,
            attempt=Execution.attempt + 1,
            total_steps=len(automation.steps),
            started_at=func.coalesce(Execution.started_at, func.now()),
            lease_expires_at=func.now() + timedelta(seconds=lease_s),
        )
        .returning(Execution.attempt)
    ).scalar()
    if claimed is None:
        return "nothing"
    first_step, previous_output = 1, None
    if claimed > 1:  # a run that started before: resume it
        first_step, previous_output = _resume(session, execution_id)
    return Claim(
        execution_id=execution.id,
        attempt=claimed,
        automation_id=automation.automation_id,
        schedule_id=execution.schedule_id,
        scheduled_for=execution.scheduled_for,
        owner_id=automation.owner_id,
        workspace_id=execution.workspace_id,
        agent_url=automation.agent_url,
        signing_secret=automation.signing_secret,
        steps=list(automation.steps),
        project_context=automation.project_context,
        step_timeout_s=automation.step_timeout_s,
        first_step=first_step,
        previous_output=previous_output,
        overlap_policy=policy,
        request_headers=dict(automation.request_headers or {}),
        concurrency_limit=automation.concurrency_limit,
        rate_limit_per_s=automation.rate_limit_per_s,
        urgent=automation.urgent,
        input=execution.input,
    )


# Group claim, the fast path: one statement claims every run of a batch that needs
# no overlap decision (a first start of a schedule with a policy other than "allow"
# does, and goes through `claim_execution`, as does anything this one leaves out:
# archived automations, runs another worker holds, final runs). Written in SQL so
# that the hot path builds no statement objects.
_CLAIM_MANY = text(
    f"""
    WITH claimed AS (
        UPDATE executions e
        SET status = '{ExecutionStatus.RUNNING}', attempt = e.attempt + 1,
            total_steps = jsonb_array_length(a.steps),
            started_at = coalesce(e.started_at, greatest(now(), e.available_at)),
            lease_expires_at = now() + make_interval(secs => :lease_s)
        FROM automations a
        WHERE e.id = ANY(:ids) AND a.id = e.automation_id AND a.archived_at IS NULL
          AND (e.status = '{ExecutionStatus.QUEUED}'
               OR (e.status = '{ExecutionStatus.RUNNING}' AND e.lease_expires_at < now()))
          AND (e.attempt > 0 OR e.schedule_id IS NULL OR e.trigger = '{Trigger.BACKFILL}'
               OR EXISTS (
                SELECT 1 FROM schedules s WHERE s.id = e.schedule_id
                AND (s.kind = '{ScheduleKind.ONCE}' OR s.overlap_policy = '{OverlapPolicy.ALLOW}')))
        RETURNING e.id, e.attempt, e.schedule_id, e.scheduled_for, e.workspace_id, e.input,
            a.id AS automation_id, a.owner_id, a.agent_url, a.signing_secret, a.steps,
            a.project_context, a.step_timeout_s, a.request_headers, a.concurrency_limit,
            a.rate_limit_per_s, a.urgent
    )
    SELECT c.*, s.kind, s.overlap_policy
    FROM claimed c LEFT JOIN schedules s ON s.id = c.schedule_id
    """
).bindparams(bindparam("ids", type_=ARRAY(Uuid())))


def claim_executions(
    session: Session,
    execution_ids: list[uuid.UUID],
    *,
    lease_s: int,
    ahead: frozenset[uuid.UUID] = frozenset(),
) -> list[ClaimResult]:
    """`claim_execution` for many runs in one transaction, one result per id, in order.

    Most claims are one row of a single UPDATE; the rest (an overlap decision, an
    archived automation, a duplicate message) are claimed one by one.

    Runs in `ahead` are not due yet (their message came early): one that needs no
    overlap decision is claimed now and started at its slot by the worker; for any
    other, "early" says to claim it at its slot, when its siblings' state is known.
    A run started ahead has `started_at` at its slot (`available_at`).
    """
    rows = session.execute(_CLAIM_MANY, {"ids": execution_ids, "lease_s": lease_s}).all()
    claimed = {row.id: _claim_from(session, row) for row in rows}
    results: list[ClaimResult] = []
    for i in execution_ids:
        if i in claimed:
            results.append(claimed.pop(i))  # a message sent twice: its run is claimed once
        elif i in ahead:
            results.append("early")
        else:
            results.append(claim_execution(session, i, lease_s=lease_s))
    return results


def _claim_from(session: Session, row: Any) -> Claim:
    """The claim of a row `_CLAIM_MANY` took (resuming a run that started before)."""
    single = row.kind is None or row.kind == ScheduleKind.ONCE
    policy = None if single or row.overlap_policy is None else OverlapPolicy(row.overlap_policy)
    first_step, previous_output = 1, None
    if row.attempt > 1:
        first_step, previous_output = _resume(session, row.id)
    return Claim(
        execution_id=row.id,
        attempt=row.attempt,
        automation_id=row.automation_id,
        schedule_id=row.schedule_id,
        scheduled_for=row.scheduled_for,
        owner_id=row.owner_id,
        workspace_id=row.workspace_id,
        agent_url=row.agent_url,
        signing_secret=row.signing_secret,
        steps=list(row.steps),
        project_context=row.project_context,
        step_timeout_s=row.step_timeout_s,
        first_step=first_step,
        previous_output=previous_output,
        overlap_policy=policy,
        request_headers=dict(row.request_headers or {}),
        concurrency_limit=row.concurrency_limit,
        rate_limit_per_s=row.rate_limit_per_s,
        urgent=row.urgent,
        input=row.input,
    )


def _resume(session: Session, execution_id: uuid.UUID) -> tuple[int, Any]:
    """A run claimed again: a step left "running" belonged to a worker that died
    mid-call; returns where to go on (`_resume_point`)."""
    session.execute(
        update(StepRun)
        .where(StepRun.execution_id == execution_id, StepRun.status == StepStatus.RUNNING)
        .values(status=StepStatus.FAILED, error=LOST_STEP_ERROR, finished_at=func.now())
    )
    return _resume_point(session, execution_id)


# One round trip per step: store the previous step's answer (when there is one),
# renew the lease and record this step as running. Data-modifying CTEs all run, on
# one snapshot; the step is inserted only if the fence still holds. Written in SQL
# so that the hot path builds no statement objects
# (tests/test_db.py::test_a_step_start_stores_the_previous_answer_in_the_same_statement).
# The previous step's answer, stored only while the step is still running: the
# worker may retry this write after a database outage, and once a takeover has
# marked the step lost a late write must not turn it into a second success.
_FINISH_STEP = f"""
    UPDATE step_runs
    SET status = :f_status, response_status = :f_code, response_body = :f_body,
        error = :f_error, finished_at = now(), duration_ms = :f_ms
    WHERE id = :f_id AND status = '{StepStatus.RUNNING}'
"""
_FINISHED_TYPES = (
    bindparam("f_id", type_=BigInteger),
    bindparam("f_code", type_=Integer),
    bindparam("f_ms", type_=Integer),
    bindparam("f_status", type_=String),
    bindparam("f_body", type_=Text),
    bindparam("f_error", type_=Text),
)
_START_STEP = text(
    f"""
    WITH finished AS ({_FINISH_STEP}), renewed AS (
        UPDATE executions
        SET current_step = :step, lease_expires_at = now() + make_interval(secs => :lease_s)
        WHERE id = :execution_id AND status = '{ExecutionStatus.RUNNING}' AND attempt = :attempt
        RETURNING id
    )
    INSERT INTO step_runs (execution_id, step_number, attempt, status, request)
    SELECT id, :step, :attempt, '{StepStatus.RUNNING}', :request FROM renewed
    RETURNING id
    """
).bindparams(bindparam("request", type_=JSONB), *_FINISHED_TYPES)


_FINISH_STEP_ALONE = text(_FINISH_STEP).bindparams(*_FINISHED_TYPES)


def _finished(finished: tuple[int, StepOutcome] | None) -> dict[str, Any]:
    """The parameters of `_FINISH_STEP` (all None: no answer to store)."""
    step_run_id, outcome = finished if finished is not None else (None, None)
    if outcome is None:
        return dict.fromkeys(("f_id", "f_status", "f_code", "f_body", "f_error", "f_ms"))
    return {
        "f_id": step_run_id,
        "f_status": _step_status(outcome),
        "f_code": outcome.status,
        "f_body": outcome.body,
        "f_error": outcome.error,
        "f_ms": outcome.duration_ms,
    }


def start_step(
    session: Session,
    claim: Claim,
    step_number: int,
    request: dict[str, Any],
    *,
    lease_s: int,
    finished: tuple[int, StepOutcome] | None = None,
) -> int | None:
    """Store `finished` (the previous step's answer), renew the lease for one step and
    record the step as running, in one statement; None if we lost the run."""
    started: int | None = session.scalar(
        _START_STEP,
        {
            **_finished(finished),
            "step": step_number,
            "lease_s": lease_s,
            "execution_id": claim.execution_id,
            "attempt": claim.attempt,
            "request": request,
        },
    )
    return started


def _step_status(outcome: StepOutcome) -> StepStatus:
    return StepStatus.SUCCEEDED if outcome.ok else StepStatus.FAILED


# Rows a group commit of the same worker holds are skipped, not waited for: waiting
# for them in the order the runs were held deadlocked with those commits under a
# burst, and a renewal lost to a deadlock let leases expire while their calls were
# alive (a second call for the same step). A held row is being written by its own
# run, whose step start renews its lease anyway; it is kept if it is still this
# claim's as last committed.
_RENEW_LEASES = text(
    f"""
    WITH held AS (
        SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS h(id, attempt)
    ), mine AS (
        SELECT e.id FROM executions e JOIN held ON held.id = e.id
        WHERE e.attempt = held.attempt AND e.status = '{ExecutionStatus.RUNNING}'
    ), free AS (
        SELECT e.id FROM executions e JOIN mine ON mine.id = e.id
        ORDER BY e.id FOR UPDATE OF e SKIP LOCKED
    ), renewed AS (
        UPDATE executions e
        SET lease_expires_at = now() + make_interval(secs => :lease_s)
        FROM free WHERE e.id = free.id
        RETURNING e.id
    )
    SELECT id FROM mine
    """
)


def renew_leases(
    session: Session, held: list[tuple[uuid.UUID, int]], *, lease_s: int
) -> set[uuid.UUID]:
    """Extend the leases of the runs a worker holds, as (execution id, attempt) pairs;
    returns the ids still this worker's (one statement for every run in flight).

    A run missing from the answer was cancelled or taken over: its worker drops it.
    """
    if not held:
        return set()
    ids = [execution_id for execution_id, _ in held]
    attempts = [attempt for _, attempt in held]
    renewed = session.scalars(
        _RENEW_LEASES, {"ids": ids, "attempts": attempts, "lease_s": lease_s}
    ).all()
    return set(renewed)


def finish_step(session: Session, step_run_id: int, outcome: StepOutcome) -> None:
    session.execute(_FINISH_STEP_ALONE, _finished((step_run_id, outcome)))


def release_for_retry(session: Session, claim: Claim, error: str, delay_s: float) -> bool:
    """Put the execution back in the queue until its retry message is due."""
    return bool(
        rowcount(
            session.execute(
                update(Execution)
                .where(_fence(claim))
                .values(
                    status=ExecutionStatus.QUEUED,
                    lease_expires_at=None,
                    error=error,
                    available_at=func.now() + timedelta(seconds=delay_s),
                )
            )
        )
    )


def defer(session: Session, claim: Claim, delay_s: float) -> bool:
    """Hand a run whose next step must wait (flow control) back to the queue.

    Nothing of it started in this claim, so the claim is undone: the attempt goes
    back, no retry is spent and no recovery counted. False if it is no longer ours.
    """
    return bool(
        rowcount(
            session.execute(
                update(Execution)
                .where(_fence(claim))
                .values(
                    status=ExecutionStatus.QUEUED,
                    attempt=Execution.attempt - 1,
                    lease_expires_at=None,
                    available_at=func.now() + timedelta(seconds=delay_s),
                )
            )
        )
    )


# The end of a run in one statement: its last answer, its status, and its
# schedule's counters (`record_outcome`).
_FINISH_EXECUTION = text(
    f"""
    WITH finished AS ({_FINISH_STEP}), ended AS (
        UPDATE executions
        SET status = :status, finished_at = now(), lease_expires_at = NULL,
            error = :error, result = :result
        WHERE id = :execution_id AND status = '{ExecutionStatus.RUNNING}' AND attempt = :attempt
        RETURNING schedule_id
    ), counted AS (
        UPDATE schedules s
        SET run_count = s.run_count + 1, success_count = s.success_count + :succeeded,
            failure_count = s.failure_count + :failed, last_status = :status,
            last_run_at = now()
        FROM ended WHERE s.id = ended.schedule_id
    )
    SELECT count(*) FROM ended
    """
).bindparams(bindparam("result", type_=JSONB), bindparam("error", type_=Text), *_FINISHED_TYPES)


def finish_execution(
    session: Session,
    claim: Claim,
    status: ExecutionStatus,
    *,
    error: str | None = None,
    result: Any = None,
    finished: tuple[int, StepOutcome] | None = None,
) -> bool:
    """Store `finished` (the last step's answer), end the execution and move its
    schedule's counters, in one statement of the caller's transaction."""
    ended = session.scalar(
        _FINISH_EXECUTION,
        {
            **_finished(finished),
            "status": str(status),
            "error": error,
            "result": result,
            "succeeded": int(status == ExecutionStatus.SUCCEEDED),
            "failed": int(status == ExecutionStatus.FAILED),
            "execution_id": claim.execution_id,
            "attempt": claim.attempt,
        },
    )
    return bool(ended)


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


def next_waiting(session: Session, schedule_id: uuid.UUID) -> RunMessage | None:
    """The earliest run held back (by `buffer_one`, or a catch-up run waiting its turn),
    to start now that the previous one ended."""
    row = session.execute(
        select(Execution.id, Execution.attempt, Automation.max_retries, Automation.urgent)
        .join(Automation, Automation.id == Execution.automation_id)
        .where(
            Execution.schedule_id == schedule_id,
            Execution.status == ExecutionStatus.QUEUED,
            Execution.scheduled_for <= func.now(),
        )
        .order_by(Execution.scheduled_for)
        .limit(1)
    ).first()
    if row is None:
        return None
    return RunMessage(row.id, row.max_retries, retries=row.attempt, urgent=row.urgent)


def stranded_executions(
    session: Session, *, requeue_after_s: int | None, resend_after_s: int, limit: int
) -> list[RunMessage]:
    """Queued runs whose message should have arrived long ago, and runs whose lease expired.

    Postgres is the source of truth: a message lost to a flushed Redis, a killed
    worker or a dead connection is simply sent again (a duplicate claims nothing).
    A queued run is sent again `requeue_after_s` after it became available; a
    running one as soon as its lease expired (its worker stopped renewing it),
    then at most every `resend_after_s`. `available_at` records each re-send.
    With `requeue_after_s` None only expired leases are looked at.
    A run past its recovery bound is failed instead (`give_up_exhausted`).
    """
    resent_lately = func.now() - timedelta(seconds=resend_after_s)
    stranded = and_(
        Execution.status == ExecutionStatus.RUNNING,
        Execution.lease_expires_at < func.now(),
        Execution.available_at < resent_lately,
    )
    if requeue_after_s is not None:
        lost = and_(
            Execution.status == ExecutionStatus.QUEUED,
            Execution.available_at < func.now() - timedelta(seconds=requeue_after_s),
        )
        stranded = or_(lost, stranded)
    give_up_exhausted(session, stranded, limit=limit)
    rows = session.execute(
        update(Execution)
        .where(
            Execution.id.in_(
                select(Execution.id)
                .where(stranded)
                .order_by(Execution.available_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        .values(available_at=func.now())
        .returning(Execution.id, Execution.attempt, Execution.automation_id)
    ).all()
    if not rows:
        return []
    budgets = {
        a.id: a
        for a in session.execute(
            select(Automation.id, Automation.max_retries, Automation.urgent).where(
                Automation.id.in_({r.automation_id for r in rows})
            )
        )
    }
    # Every claim so far spent one try, including one whose worker died.
    return [
        RunMessage(
            r.id,
            budgets[r.automation_id].max_retries,
            retries=r.attempt,
            urgent=budgets[r.automation_id].urgent,
        )
        for r in rows
    ]


def failure_of(session: Session, execution_id: uuid.UUID) -> str | None:
    """The error of a run that failed for good; None if it is not failed (any more)."""
    return session.scalar(
        select(Execution.error).where(
            Execution.id == execution_id, Execution.status == ExecutionStatus.FAILED
        )
    )


def give_up_exhausted(session: Session, stranded: Any, *, limit: int) -> int:
    """Fail the stranded runs (`stranded`: a condition on executions) already claimed
    MAX_RECOVERIES times more than their retries allow; returns how many.

    Each claim counts in `attempt`, and only a recovery (or a worker handing a run
    back at shutdown) claims a run past its retries, so a run that keeps killing or
    losing its worker ends here with the reason, counted on its schedule, instead of
    calling the agent again every minute forever. A run waiting its turn is never
    claimed, so waiting costs it nothing.
    """
    exhausted = (
        select(Execution.id)
        .join(Automation, Automation.id == Execution.automation_id)
        .where(stranded, Execution.attempt >= Automation.max_retries + 1 + MAX_RECOVERIES)
        .limit(limit)
        .with_for_update(of=Execution, skip_locked=True)
    )
    ended = session.execute(
        update(Execution)
        .where(Execution.id.in_(exhausted))
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
    for row in ended:
        if row.schedule_id is not None:
            record_outcome(session, row.schedule_id, ExecutionStatus.FAILED)
    return len(ended)


def purge_history(session: Session, *, older_than_days: int, batch: int) -> int:
    """Delete one small batch of finished executions older than the retention age.

    Small batches keep each transaction short: no long lock on the table. The
    caller loops while a full batch was deleted.
    """
    cutoff = func.now() - timedelta(days=older_than_days)
    victims = (
        select(Execution.id)
        .where(Execution.queued_at < cutoff, Execution.status.in_(FINAL_STATUSES))
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    return rowcount(session.execute(delete(Execution).where(Execution.id.in_(victims))))
