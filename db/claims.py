"""Claims: a worker takes a run for itself, in one statement for most runs.

A run is claimed with a conditional UPDATE (queued, or running with an expired
lease) that gives it a lease and a new attempt; a first start of a scheduled run
whose schedule has an overlap policy asks the policy first, serialised per schedule:
for a group, set-based in one UPDATE when no other run of its schedule is in the way,
else one by one. Functions take a session and never commit: the caller owns the
transaction.

**A wake.** A parked run (`waiting`, docs/RELIABILITY.md "Waits") whose `available_at` has
come (its earliest wait's end, or now: a wait was resolved) is claimed by the same UPDATE,
but a wake is neither an attempt nor a recovery: it keeps the run's `attempt`, so it spends
none of the run's retries (a re-sent message counts claims by `attempt`) and none of
`MAX_RECOVERIES` (`db.recovery.give_up_exhausted` counts `attempt` too). Its writes stay
fenced on `(status = 'running', attempt)`: the coordinator of that attempt parked the run
in a fenced write after its last call had ended and then returned (it writes nothing after
a park, not even a retry of the park itself: `tasks/graphrun.py`), so no other writer of
the attempt is left; anyone else who takes the run over (an expired lease) or a person's
retry makes a new attempt, as before. A wake is not an overlap decision either: the run
had started.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import ARRAY, Uuid, and_, bindparam, case, func, or_, select, text, update
from sqlalchemy.orm import Session

from core.outcome import parse_output
from core.schedule import decide_overlap
from core.vocabulary import (
    IN_PROGRESS_STATUSES,
    OPEN_STATUSES,
    Admission,
    ExecutionStatus,
    OverlapDecision,
    OverlapPolicy,
    ScheduleKind,
    StepStatus,
    Trigger,
)
from db.models import Automation, Execution, Schedule, StepRun
from db.runs import AUTOMATION_DELETED, LOST_STEP_ERROR, Claim, ClaimResult, cancel_executions

SKIP_REASONS = {
    OverlapDecision.SKIP: "skipped: the previous run was still running (overlap policy)",
    OverlapDecision.SUPERSEDED: "skipped: a later slot already started (overlap policy)",
}


def _overlap(session: Session, execution: Any, policy: OverlapPolicy) -> OverlapDecision:
    """run / skip / wait for a scheduled execution (its claim row), serialised per schedule."""
    # An advisory lock, not a row lock on the schedule: the dispatcher's
    # FOR UPDATE SKIP LOCKED must never skip a schedule because a run is starting.
    session.execute(
        select(func.pg_advisory_xact_lock(func.hashtextextended(str(execution.schedule_id), 0)))
    )
    siblings = select(Execution.id).where(  # the slots' runs: one by hand takes no slot
        Execution.schedule_id == execution.schedule_id,
        Execution.id != execution.id,
        Execution.trigger != Trigger.MANUAL,
    )
    # In progress: running with a live lease, or parked on a wait (a waiting run has no
    # lease, and is as much its schedule's current run as a running one).
    running = siblings.where(
        or_(
            and_(
                Execution.status == ExecutionStatus.RUNNING,
                Execution.lease_expires_at > func.now(),
            ),
            Execution.status == ExecutionStatus.WAITING,
        )
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

    A parked run (`waiting`) whose `available_at` has come is woken: the same claim,
    keeping its attempt (the module's docstring says why that is safe).

    Returns NOTHING when another worker has it or it is final (a duplicate
    message), or it is parked and not due yet; SKIPPED/WAITING when the overlap policy
    says so.
    """
    row = session.execute(_CLAIM_READ, {"id": execution_id}).first()
    if row is None:
        return Admission.NOTHING
    execution = automation = row  # columns, not ORM objects: the hot path loads none
    if automation.archived_at is not None:
        # Deleting cancels every open run; this closes a run created in a race
        # with the delete, so that it is neither started nor taken over.
        cancel_executions(session, Execution.id == execution_id, AUTOMATION_DELETED)
        return Admission.NOTHING
    # A one-off schedule has one slot: nothing can overlap it.
    single = row.kind is None or row.kind == ScheduleKind.ONCE
    policy = None if single or row.overlap_policy is None else OverlapPolicy(row.overlap_policy)
    # Whether a lease has expired is the UPDATE's to say, on the database's clock.
    claimable = execution.status in (ExecutionStatus.QUEUED, ExecutionStatus.WAITING) or (
        execution.status == ExecutionStatus.RUNNING and execution.lease_expires_at is not None
    )
    if not claimable:
        return Admission.NOTHING
    # The overlap policy decides whether a slot starts; a retry of a run that
    # already started is that run going on, not a new slot.
    # A backfill (past slots a person asked for, `db.backfill`) and a run started by hand
    # are not held back by it.
    first_start = execution.attempt == 0 and execution.trigger not in (
        Trigger.BACKFILL,
        Trigger.MANUAL,
    )
    if first_start and policy is not None and policy != OverlapPolicy.ALLOW:
        decision = _overlap(session, execution, policy)
        if decision in SKIP_REASONS:
            _skip_for_overlap(session, execution, SKIP_REASONS[decision])
            return Admission.SKIPPED
        if decision == OverlapDecision.WAIT:
            return Admission.WAITING
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
                and_(
                    Execution.status == ExecutionStatus.WAITING,
                    Execution.available_at <= func.now(),
                ),
            ),
        )
        .values(
            status=ExecutionStatus.RUNNING,
            # A wake keeps its attempt: not a retry, not a recovery (the module's docstring).
            attempt=case(
                (Execution.status == ExecutionStatus.WAITING, Execution.attempt),
                else_=Execution.attempt + 1,
            ),
            total_steps=len(automation.steps),
            started_at=func.coalesce(Execution.started_at, func.now()),
            lease_expires_at=func.now() + timedelta(seconds=lease_s),
        )
        .returning(Execution.attempt)
    ).scalar()
    if claimed is None:
        return Admission.NOTHING
    first_step, previous_output = 1, None
    # A run that started before: resume it (a woken run has no step left running: its
    # coordinator parked it with no call in flight, so this marks nothing of it lost).
    if claimed > 1:
        first_step, previous_output = _resume(session, execution_id)
    return _claim_of(
        row, attempt=claimed, policy=policy, first_step=first_step, previous_output=previous_output
    )


# Group claim, the fast path: one statement claims every run of a batch that needs
# no overlap decision (a first start of a schedule with a policy other than "allow"
# does, and goes through `claim_execution`, as does anything this one leaves out:
# archived automations, runs another worker holds, final runs, parked runs not due
# yet). A parked run whose time has come is woken here, keeping its attempt. Written
# in SQL so that the hot path builds no statement objects.
_CLAIM_MANY = text(
    f"""
    WITH claimed AS (
        UPDATE executions e
        SET status = '{ExecutionStatus.RUNNING}',
            attempt = CASE WHEN e.status = '{ExecutionStatus.WAITING}' THEN e.attempt
                ELSE e.attempt + 1 END,
            total_steps = jsonb_array_length(a.steps),
            started_at = coalesce(e.started_at, greatest(now(), e.available_at)),
            lease_expires_at = now() + make_interval(secs => :lease_s)
        FROM automations a
        WHERE e.id = ANY(:ids) AND a.id = e.automation_id AND a.archived_at IS NULL
          AND (e.status = '{ExecutionStatus.QUEUED}'
               OR (e.status = '{ExecutionStatus.RUNNING}' AND e.lease_expires_at < now())
               OR (e.status = '{ExecutionStatus.WAITING}' AND e.available_at <= now()))
          AND (e.attempt > 0 OR e.schedule_id IS NULL
               OR e.trigger IN ('{Trigger.BACKFILL}', '{Trigger.MANUAL}')
               OR EXISTS (
                SELECT 1 FROM schedules s WHERE s.id = e.schedule_id
                AND (s.kind = '{ScheduleKind.ONCE}' OR s.overlap_policy = '{OverlapPolicy.ALLOW}')))
        RETURNING e.id, e.attempt, e.schedule_id, e.scheduled_for, e.workspace_id, e.input,
            e.trigger, a.id AS automation_id, a.owner_id, a.agent_url, a.signing_secret,
            a.steps, a.project_context, a.step_timeout_s, a.request_headers,
            a.concurrency_limit, a.rate_limit_per_s, a.urgent
    )
    SELECT c.*, s.kind, s.overlap_policy
    FROM claimed c LEFT JOIN schedules s ON s.id = c.schedule_id
    """
).bindparams(bindparam("ids", type_=ARRAY(Uuid())))


# Group claim of first starts that need an overlap decision (`skip`, `buffer_one`),
# for the runs `_CLAIM_MANY` left. The decision is "run" when no other run of the
# schedule is running (live lease or not) or waiting, none started at a later slot and no
# earlier catch-up run waits (`core.schedule.decide_overlap`), and no other run of
# the schedule is in this group (two queued slots would each see the other as not
# running): those runs are claimed here; any other is left to `claim_execution`.
# `_LOCK_SCHEDULES` first takes `_overlap`'s lock on each schedule of the group, in
# one order (two groups never wait on each other in a cycle); this statement then
# reads its siblings in a snapshot taken after the locks, as `_overlap` does, so two
# runs of one schedule are never both started by concurrent claims. Its two sibling
# checks match the partial indexes (open runs: `ix_executions_open`; later slots:
# `uq_executions_slot`): one check over both let the planner scan the whole table,
# and a claim of ten runs took 20 ms at 10,000 executions (bench/RESULTS.md). A run
# started by hand takes no slot and is not a sibling, as in `_overlap`.
_LOCK_SCHEDULES = text(
    """
    SELECT count(pg_advisory_xact_lock(k)) FROM (
        SELECT DISTINCT hashtextextended(schedule_id::text, 0) AS k
        FROM executions WHERE id = ANY(:ids) AND schedule_id IS NOT NULL
        ORDER BY k
    ) keys
    """
).bindparams(bindparam("ids", type_=ARRAY(Uuid())))

_OPEN = ", ".join(f"'{status}'" for status in OPEN_STATUSES)  # `ix_executions_open`'s
_IN_PROGRESS = ", ".join(f"'{status}'" for status in IN_PROGRESS_STATUSES)
_CLAIM_UNCONTESTED = text(
    f"""
    WITH claimed AS (
        UPDATE executions e
        SET status = '{ExecutionStatus.RUNNING}', attempt = 1,
            total_steps = jsonb_array_length(a.steps),
            started_at = greatest(now(), e.available_at),
            lease_expires_at = now() + make_interval(secs => :lease_s)
        FROM automations a
        WHERE e.id = ANY(:ids) AND a.id = e.automation_id AND a.archived_at IS NULL
          AND e.status = '{ExecutionStatus.QUEUED}' AND e.attempt = 0
          AND e.trigger <> '{Trigger.BACKFILL}'
          AND EXISTS (
            SELECT 1 FROM schedules s WHERE s.id = e.schedule_id
            AND s.kind <> '{ScheduleKind.ONCE}'
            AND s.overlap_policy IN ('{OverlapPolicy.SKIP}', '{OverlapPolicy.BUFFER_ONE}'))
          AND NOT EXISTS (
            SELECT 1 FROM unnest(:ids) AS other(id) JOIN executions o ON o.id = other.id
            WHERE o.schedule_id = e.schedule_id AND o.id <> e.id)
          AND NOT EXISTS (
            SELECT 1 FROM executions o
            WHERE o.schedule_id = e.schedule_id AND o.id <> e.id
              AND o.status IN ({_OPEN})
              AND o.trigger <> '{Trigger.MANUAL}'
              AND (o.status IN ({_IN_PROGRESS})
                   OR (o.trigger = '{Trigger.CATCHUP}' AND o.attempt = 0
                       AND o.scheduled_for < e.scheduled_for AND o.scheduled_for <= now())))
          AND NOT EXISTS (
            SELECT 1 FROM executions o
            WHERE o.schedule_id = e.schedule_id AND o.trigger <> '{Trigger.MANUAL}'
              AND o.scheduled_for > e.scheduled_for AND o.started_at IS NOT NULL)
        RETURNING e.id, e.attempt, e.schedule_id, e.scheduled_for, e.workspace_id, e.input,
            e.trigger, a.id AS automation_id, a.owner_id, a.agent_url, a.signing_secret, a.steps,
            a.project_context, a.step_timeout_s, a.request_headers, a.concurrency_limit,
            a.rate_limit_per_s, a.urgent
    )
    SELECT c.*, s.kind, s.overlap_policy
    FROM claimed c JOIN schedules s ON s.id = c.schedule_id
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

    Most claims are one row of a single UPDATE (`_CLAIM_MANY`); first starts that
    need an overlap decision are claimed together by a second one when no other
    run of their schedule is in the way (`_CLAIM_UNCONTESTED`); the rest (a
    sibling running or in the same group, an archived automation, a duplicate
    message) are claimed one by one.

    Runs in `ahead` are not due yet (their message came up to `START_AHEAD_MS` early):
    one that needs no overlap decision, or whose decision is "run" with nothing in the
    way (`_CLAIM_UNCONTESTED`), is claimed now and started at its slot by the worker;
    for any other, EARLY says to claim it at its slot, when its siblings' state is
    known. So a burst of cron slots is claimed in groups ahead, as one-off slots are,
    and a slot whose previous run still runs is decided at the slot itself. A run
    started ahead has `started_at` at its slot (`available_at`).
    """
    rows = session.execute(_CLAIM_MANY, {"ids": execution_ids, "lease_s": lease_s}).all()
    claimed = {row.id: _claim_from(session, row) for row in rows}
    left = list(dict.fromkeys(i for i in execution_ids if i not in claimed))
    if left:
        claimed |= {
            row.id: _claim_from(session, row) for row in _claim_uncontested(session, left, lease_s)
        }
    results: list[ClaimResult] = []
    for i in execution_ids:
        if i in claimed:
            results.append(claimed.pop(i))  # a message sent twice: its run is claimed once
        elif i in ahead:
            results.append(Admission.EARLY)
        else:
            results.append(claim_execution(session, i, lease_s=lease_s))
    return results


def _claim_uncontested(session: Session, ids: list[uuid.UUID], lease_s: int) -> list[Any]:
    """The runs of `ids` whose overlap decision is "run" with nothing in the way, claimed."""
    session.execute(_LOCK_SCHEDULES, {"ids": ids})
    return list(session.execute(_CLAIM_UNCONTESTED, {"ids": ids, "lease_s": lease_s}).all())


def _claim_from(session: Session, row: Any) -> Claim:
    """The claim of a row `_CLAIM_MANY` took (resuming a run that started before)."""
    single = row.kind is None or row.kind == ScheduleKind.ONCE
    policy = None if single or row.overlap_policy is None else OverlapPolicy(row.overlap_policy)
    first_step, previous_output = 1, None
    if row.attempt > 1:
        first_step, previous_output = _resume(session, row.id)
    return _claim_of(
        row,
        attempt=row.attempt,
        policy=policy,
        first_step=first_step,
        previous_output=previous_output,
    )


def _claim_of(
    row: Any, *, attempt: int, policy: OverlapPolicy | None, first_step: int, previous_output: Any
) -> Claim:
    """A claim from a claim row (`_CLAIM_READ` or `_CLAIM_MANY`: the same names)."""
    return Claim(
        execution_id=row.id,
        attempt=attempt,
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
        trigger=row.trigger,
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
