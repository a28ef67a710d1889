"""An execution's life in the database: its messages, its claim, steps, retry and end.

(Over 400 lines: the statements fenced on a claim share the fence and the SQL of a
step's answer, `_FINISH_STEP`; claiming is `db/claims.py`, recovery `db/recovery.py`.)

Every write a worker makes is fenced on `(status = 'running', attempt = <its
attempt>)`: a worker whose lease expired and whose execution was taken over, or
cancelled, finds zero rows and stops instead of overwriting newer state.
Functions take a session and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Integer,
    String,
    Text,
    Uuid,
    and_,
    bindparam,
    func,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from core.limits import WAKE_HORIZON_S
from core.outcome import StepOutcome
from core.text import json_bytes
from core.vocabulary import (
    OPEN_STATUSES,
    Admission,
    ExecutionStatus,
    FailureReport,
    OverlapPolicy,
    StepStatus,
    Trigger,
)
from db.models import Execution, StepRun
from db.session import rowcount

LOST_STEP_ERROR = "the worker running this step stopped (killed or lost its lease)"
CANCELLED_STEP_ERROR = (
    "cut: the run was cancelled while this step was at the agent; its answer is not recorded"
)
CANCELLED_WAIT_ERROR = "cancelled while it waited: the run was cancelled"
AUTOMATION_DELETED = "cancelled: the automation was deleted"
SCHEDULE_DELETED = "cancelled: the schedule was deleted"
# A slot's message is delivered this much before the slot, and the worker that takes
# it starts the run at the slot itself (`tasks.admission.Gate.accept`): the queue's hand-off
# of a delayed message (a few hundred milliseconds) then costs the start nothing.
START_AHEAD_MS = 1000


@dataclass(frozen=True)
class RunMessage:
    """A run to hand to the workers once the transaction that made it has committed.

    Each kind of message has its constructor below; they say which fields it carries.
    """

    execution_id: uuid.UUID
    max_retries: int
    retries: int = 0  # tries already spent, so a re-sent message keeps its retry budget
    delay_ms: int = 0  # from when the database decided it
    report: FailureReport | None = None  # the run failed for good: dead-letter this message
    # Deliver up to this much before `delay_ms` ends; the worker waits for the rest.
    ahead_ms: int = 0
    urgent: bool = False  # the automation's runs go to the urgent queue

    @classmethod
    def start(cls, execution_id: uuid.UUID, *, max_retries: int, urgent: bool) -> RunMessage:
        """A run to start now with its whole retry budget: a new run, or one a person retried."""
        return cls(execution_id, max_retries, urgent=urgent)

    @classmethod
    def at_slot(
        cls, execution_id: uuid.UUID, *, max_retries: int, delay_ms: int, urgent: bool
    ) -> RunMessage:
        """A scheduled run due `delay_ms` from now, delivered `START_AHEAD_MS` before it."""
        return cls(
            execution_id, max_retries, delay_ms=delay_ms, ahead_ms=START_AHEAD_MS, urgent=urgent
        )

    @classmethod
    def retry(
        cls, execution_id: uuid.UUID, *, max_retries: int, spent: int, delay_ms: int, urgent: bool
    ) -> RunMessage:
        """A run that failed and tries again after its backoff, `delay_ms`: one more retry
        of its budget spent (`spent`: the retries it had spent before)."""
        return cls(execution_id, max_retries, retries=spent + 1, delay_ms=delay_ms, urgent=urgent)

    @classmethod
    def hand_back(
        cls,
        execution_id: uuid.UUID,
        *,
        max_retries: int,
        retries: int,
        urgent: bool,
        delay_ms: int = 0,
    ) -> RunMessage:
        """The same try sent on, no retry spent: by a worker that stops, by one whose
        threads cannot wait for an early message, or deferred by flow control."""
        return cls(execution_id, max_retries, retries=retries, delay_ms=delay_ms, urgent=urgent)

    @classmethod
    def resend(
        cls, execution_id: uuid.UUID, *, max_retries: int, attempts: int, urgent: bool
    ) -> RunMessage:
        """A queued or stranded run sent again from its row: every claim so far (`attempts`)
        spent one try, including one whose worker died."""
        return cls(execution_id, max_retries, retries=attempts, urgent=urgent)

    @classmethod
    def wake(
        cls, execution_id: uuid.UUID, *, max_retries: int, retries: int, delay_ms: int, urgent: bool
    ) -> RunMessage:
        """A parked run's wake-up, `delay_ms` from now (its earliest wait's end), with the
        budget it had: delivered up to `START_AHEAD_MS` early, claimed at its time."""
        ahead_ms = START_AHEAD_MS if delay_ms > 0 else 0
        return cls(
            execution_id,
            max_retries,
            retries=retries,
            delay_ms=delay_ms,
            ahead_ms=ahead_ms,
            urgent=urgent,
        )

    @classmethod
    def failed(
        cls, execution_id: uuid.UUID, *, retries: int, report: FailureReport, urgent: bool
    ) -> RunMessage:
        """The last message of a run that failed for good: its actor raises, and Dramatiq
        dead-letters it with the retries it spent."""
        return cls(execution_id, retries, retries=retries, report=report, urgent=urgent)


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
    trigger: str = Trigger.MANUAL  # why the run exists (its slot's lateness is measured)

    @property
    def flow_controlled(self) -> bool:
        return self.concurrency_limit is not None or self.rate_limit_per_s is not None

    @property
    def total_steps(self) -> int:
        return len(self.steps)


# A claim, or why there is none (NOTHING, SKIPPED, WAITING or EARLY).
ClaimResult = Claim | Admission


def _fence(claim: Claim) -> Any:
    return and_(
        Execution.id == claim.execution_id,
        Execution.status == ExecutionStatus.RUNNING,
        Execution.attempt == claim.attempt,
    )


def cancel_executions(session: Session, where: Any, reason: str) -> int:
    """Cancel the open (queued, running or waiting) executions matching `where`; returns
    how many.

    A running one's worker finds its fence gone and stops before its next step; the
    step it has at the agent is cut at once (marked cancelled, not failed: the agent did
    not fail), so nothing of a cancelled run stays running, and the answer, when it comes,
    is not recorded (`finish_step` is fenced on the step still running). Its waiting steps
    (a sleep, a callback or an approval not come yet) are cancelled too: a callback or a
    decision that comes later finds no waiting row and changes nothing. A parked run has
    no worker: the cancel is all there is to do (its wake-up message claims nothing).
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
            .values(status=StepStatus.CANCELLED, error=CANCELLED_STEP_ERROR, finished_at=func.now())
        )
        session.execute(
            update(StepRun)
            .where(StepRun.execution_id.in_(cancelled), StepRun.status == StepStatus.WAITING)
            .values(status=StepStatus.CANCELLED, error=CANCELLED_WAIT_ERROR, finished_at=func.now())
        )
    return len(cancelled)


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
# The previous answers of a many-row statement's rows (`u`, with the `f_*` columns of
# `_FINISHED_NAMES`), stored as `_FINISH_STEP` stores one.
_FINISH_STEPS_OF_U = f"""
        UPDATE step_runs s
        SET status = u.f_status, response_status = u.f_code, response_body = u.f_body,
            error = u.f_error, finished_at = now(), duration_ms = u.f_ms
        FROM u WHERE s.id = u.f_id AND s.status = '{StepStatus.RUNNING}'
"""
# One statement for the step starts of a whole group commit: for each, store the
# previous step's answer (when there is one), renew the lease and record the step as
# running. The rows travel as one array per column; data-modifying CTEs all run, on one
# snapshot; a step is inserted only where its run's fence still holds. One statement a
# batch, not one a step: at 10,000 runs in flight a statement each cost more worker CPU
# than the agent call (bench/RESULTS.md, issue 24's profile). Written in SQL so that the
# hot path builds no statement objects
# (tests/test_db.py::test_a_step_start_stores_the_previous_answer_in_the_same_statement).
_START_STEPS = text(
    f"""
    WITH u AS (
        SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS u (execution_id uuid,
            attempt int, step int, request json, trace_id text, f_id bigint, f_status text,
            f_code int, f_body text, f_error text, f_ms int, key text, item int)
    ), finished AS ({_FINISH_STEPS_OF_U}), renewed AS (
        UPDATE executions e
        SET current_step = u.step, lease_expires_at = now() + make_interval(secs => :lease_s),
            trace_id = COALESCE(u.trace_id, e.trace_id)
        FROM u
        WHERE e.id = u.execution_id AND e.status = '{ExecutionStatus.RUNNING}'
          AND e.attempt = u.attempt
        RETURNING e.id
    )
    INSERT INTO step_runs (execution_id, step_number, step_key, item, attempt, status, request)
    SELECT u.execution_id, u.step, COALESCE(u.key, 'step_' || u.step), u.item, u.attempt,
        '{StepStatus.RUNNING}', CAST(u.request AS jsonb)
    FROM u JOIN renewed r ON r.id = u.execution_id
    RETURNING execution_id, step_key, item, id
    """
)


@dataclass(frozen=True)
class StepStart:
    """A step to record as running, with the previous step's answer to store first.

    A chain's step leaves `key` None (its key is `step_<number>`); a graph's names its key
    and, for an item of a fan-out, the item's index."""

    claim: Claim
    step_number: int
    request: dict[str, Any]
    finished: tuple[int, StepOutcome] | None = None
    trace_id: str | None = None
    key: str | None = None
    item: int | None = None


def start_steps(session: Session, starts: list[StepStart], *, lease_s: int) -> list[int | None]:
    """Store each start's `finished` (the previous step's answer), renew its run's lease
    for one step and record the step as running, all in one statement; per start, the
    new step run's id, or None where its run is no longer this claim's. A chain's run has
    one start in a batch at most (it waits for each write before its next); a graph's may
    have several, one per step (or item) at most."""
    rows = session.execute(
        _START_STEPS,
        {
            "rows": _rows(
                {
                    "execution_id": str(start.claim.execution_id),
                    "attempt": start.claim.attempt,
                    "step": start.step_number,
                    "request": start.request,
                    "trace_id": start.trace_id,
                    **_finished(start.finished),
                    **({} if start.key is None else {"key": start.key, "item": start.item}),
                }
                for start in starts
            ),
            "lease_s": lease_s,
        },
    )
    started = {
        (execution_id, key, item): step_run_id for execution_id, key, item, step_run_id in rows
    }
    return [
        started.get(
            (
                start.claim.execution_id,
                f"step_{start.step_number}" if start.key is None else start.key,
                start.item,
            )
        )
        for start in starts
    ]


_FINISH_STEP_ALONE = text(_FINISH_STEP).bindparams(*_FINISHED_TYPES)


def _rows(rows: Iterable[dict[str, Any]]) -> str:
    """The rows of a many-row statement as one JSON document (`json_to_recordset`): one
    string parameter, escaped by the JSON encoder in C. Arrays of texts (`unnest`) had
    every quote of every stored body escaped one by one in Python by the driver: as
    much worker CPU as the rest of the statement (bench/RESULTS.md, issue 24)."""
    return json_bytes(list(rows)).decode()


_FINISHED_NAMES = ("f_id", "f_status", "f_code", "f_body", "f_error", "f_ms")


def _finished(finished: tuple[int, StepOutcome] | None) -> dict[str, Any]:
    """The parameters of `_FINISH_STEP` (all None: no answer to store)."""
    step_run_id, outcome = finished if finished is not None else (None, None)
    if outcome is None:
        return dict.fromkeys(_FINISHED_NAMES)
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
    trace_id: str | None = None,
) -> int | None:
    """`start_steps` for one step: its step run's id, or None if we lost the run.
    `trace_id` (tracing on) is kept on the execution."""
    start = StepStart(claim, step_number, request, finished, trace_id)
    return start_steps(session, [start], lease_s=lease_s)[0]


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


# The ends of a group commit's runs in one statement: each one's last answer, its
# status, and its schedule's counters (as `db.recovery.record_outcome` moves them),
# added up per schedule (an UPDATE changes a row once however many rows join it). The
# schedules are locked first, in id order, so two batches ending runs of the same
# schedules cannot deadlock on their counters.
_FINISH_EXECUTIONS = text(
    f"""
    WITH u AS (
        SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS u (execution_id uuid,
            attempt int, status text, error text, result text, f_id bigint, f_status text,
            f_code int, f_body text, f_error text, f_ms int, n int)
    ), finished AS ({_FINISH_STEPS_OF_U}), ended AS (
        UPDATE executions e
        SET status = u.status, finished_at = now(), lease_expires_at = NULL,
            error = u.error, result = CAST(u.result AS jsonb)
        FROM u
        WHERE e.id = u.execution_id AND e.status = '{ExecutionStatus.RUNNING}'
          AND e.attempt = u.attempt
        RETURNING e.id, e.schedule_id, u.status, u.n
    ), locked AS (
        SELECT id FROM schedules WHERE id IN (SELECT schedule_id FROM ended)
        ORDER BY id FOR NO KEY UPDATE
    ), counted AS (
        UPDATE schedules s
        SET run_count = s.run_count + c.runs, success_count = s.success_count + c.succeeded,
            failure_count = s.failure_count + c.failed, last_status = c.last_status,
            last_run_at = now()
        FROM (
            SELECT schedule_id, count(*) AS runs,
                count(*) FILTER (WHERE status = '{ExecutionStatus.SUCCEEDED}') AS succeeded,
                count(*) FILTER (WHERE status = '{ExecutionStatus.FAILED}') AS failed,
                (array_agg(status ORDER BY n DESC))[1] AS last_status
            FROM ended GROUP BY schedule_id
        ) c JOIN locked l ON l.id = c.schedule_id
        WHERE s.id = c.schedule_id
    )
    SELECT id FROM ended
    """
)


@dataclass(frozen=True)
class RunEnd:
    """A run to end as `status`, with its last step's answer to store first."""

    claim: Claim
    status: ExecutionStatus
    error: str | None = None
    result: Any = None
    finished: tuple[int, StepOutcome] | None = None


def finish_executions(session: Session, ends: list[RunEnd]) -> list[bool]:
    """Store each end's `finished` (the last step's answer), end the run and move its
    schedule's counters, all in one statement of the caller's transaction; per end,
    False where the run was no longer this claim's (cancelled, taken over)."""
    rows = session.execute(
        _FINISH_EXECUTIONS,
        {
            "rows": _rows(
                {
                    "execution_id": str(end.claim.execution_id),
                    "attempt": end.claim.attempt,
                    "status": end.status,
                    "error": end.error,
                    "result": json_bytes(end.result).decode(),  # JSON null stays JSON null
                    **_finished(end.finished),
                    "n": n,
                }
                for n, end in enumerate(ends)
            )
        },
    )
    ended = {execution_id for (execution_id,) in rows}
    return [end.claim.execution_id in ended for end in ends]


def finish_execution(
    session: Session,
    claim: Claim,
    status: ExecutionStatus,
    *,
    error: str | None = None,
    result: Any = None,
    finished: tuple[int, StepOutcome] | None = None,
) -> bool:
    """`finish_executions` for one run: False if it was no longer this claim's."""
    return finish_executions(session, [RunEnd(claim, status, error, result, finished)])[0]


# The earliest run each schedule holds back (`buffer_one`, or a catch-up run waiting its
# turn), for many schedules in one statement: one index lookup each on the slot key.
_NEXT_WAITING = text(
    f"""
    SELECT DISTINCT ON (e.schedule_id) e.schedule_id, e.id, e.attempt, a.max_retries, a.urgent
    FROM executions e JOIN automations a ON a.id = e.automation_id
    WHERE e.schedule_id = ANY(:schedule_ids) AND e.trigger <> '{Trigger.MANUAL}'
      AND e.status = '{ExecutionStatus.QUEUED}' AND e.scheduled_for <= now()
    ORDER BY e.schedule_id, e.scheduled_for
    """
).bindparams(bindparam("schedule_ids", type_=ARRAY(Uuid())))


def next_waiting(session: Session, schedule_ids: list[uuid.UUID]) -> dict[uuid.UUID, RunMessage]:
    """The earliest run each of `schedule_ids` held back, to start now that the previous
    one ended (a run started by hand is sent when started: never held back)."""
    return {
        row.schedule_id: RunMessage.resend(
            row.id, max_retries=row.max_retries, attempts=row.attempt, urgent=row.urgent
        )
        for row in session.execute(_NEXT_WAITING, {"schedule_ids": schedule_ids})
    }


def failure_of(session: Session, execution_id: uuid.UUID) -> str | None:
    """The error of a run that failed for good; None if it is not failed (any more)."""
    return session.scalar(
        select(Execution.error).where(
            Execution.id == execution_id, Execution.status == ExecutionStatus.FAILED
        )
    )


# --- a graph's own rows (tasks/graphrun.py) ---------------------------------------------------

# A graph run's step runs as its engine rebuilds them at a claim: every row in order (the
# latest row of a step key and item says where that call stands), read through
# `ix_step_runs_execution`. `items` is the list a fan-out's own row (item null) recorded.
# A wait's row (`wait` not null) also says whether its wait_until has passed (`past`) and
# whether it ended since the run last started (`lately`: not before a person's retry,
# which restarts `started_at`), both on the database's clock.
_GRAPH_ROWS = text(
    """
    SELECT s.id, s.step_key, s.item, s.status, s.response_body, s.error,
        CASE WHEN s.item IS NULL THEN s.request -> 'items' END AS items,
        s.wait, s.wait_until <= now() AS past,
        s.wait IS NOT NULL AND s.finished_at >= e.started_at AS lately
    FROM step_runs s JOIN executions e ON e.id = s.execution_id
    WHERE s.execution_id = :execution_id ORDER BY s.id
    """
)


def graph_rows(session: Session, execution_id: uuid.UUID) -> list[Any]:
    """A graph run's step runs, oldest first (id, step_key, item, status, response_body,
    error, items, wait, past, lately)."""
    return list(session.execute(_GRAPH_ROWS, {"execution_id": execution_id}).all())


@dataclass(frozen=True)
class StepMark:
    """A step run a graph's engine records without a call: a step skipped, cancelled or failed
    before any call (its reason in `error`), a fan-out's own row (running while its items
    run: `request` holds the items), or the start of a sleep or an approval (`waiting`, with
    what it waits for in `wait`, until `wait_until` or `wait_s` from the database's now)."""

    step_number: int
    key: str
    status: StepStatus
    error: str | None = None
    item: int | None = None
    request: dict[str, Any] = field(default_factory=dict)
    body: str | None = None
    wait: dict[str, Any] | None = None
    wait_until: datetime | None = None
    wait_s: float | None = None


@dataclass(frozen=True)
class StepClose:
    """A fan-out's own row ended, or a wait cancelled (its run failed): its status, the list
    of its items' outputs (JSON) or why; only while the row runs or waits."""

    step_run_id: int
    status: StepStatus
    body: str | None = None
    error: str | None = None


_INSERT_MARKS = text(
    f"""
    INSERT INTO step_runs (execution_id, step_number, step_key, item, attempt, status, request,
        error, response_body, finished_at, wait, wait_until)
    SELECT :execution_id, u.step, u.key, u.item, :attempt, u.status, CAST(u.request AS jsonb),
        u.error, u.body,
        CASE WHEN u.status IN ('{StepStatus.RUNNING}', '{StepStatus.WAITING}') THEN NULL
            ELSE now() END,
        CAST(u.wait AS jsonb), COALESCE(u.wait_until, now() + make_interval(secs => u.wait_s))
    FROM json_to_recordset(CAST(:rows AS json)) AS u (step int, key text, item int,
        status text, request json, error text, body text, wait json, wait_until timestamptz,
        wait_s double precision)
    RETURNING step_key, item, id
    """
)
_CLOSE_STEPS = text(
    f"""
    UPDATE step_runs s SET status = u.status, response_body = u.body, error = u.error,
        finished_at = now(), duration_ms = (extract(epoch FROM now() - s.started_at) * 1000)::int
    FROM json_to_recordset(CAST(:rows AS json)) AS u (id bigint, status text, body text,
        error text)
    WHERE s.id = u.id AND s.status IN ('{StepStatus.RUNNING}', '{StepStatus.WAITING}')
    """
)
_FINISH_STEPS = text(
    f"""
    WITH u AS (
        SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS u (f_id bigint, f_status text,
            f_code int, f_body text, f_error text, f_ms int)
    ) {_FINISH_STEPS_OF_U}
    """
)


def finish_steps(session: Session, finished: list[tuple[int, StepOutcome]]) -> None:
    """Store answers, each only while its step run is still running (`_FINISH_STEP`), in one
    statement."""
    if finished:
        session.execute(_FINISH_STEPS, {"rows": _rows(_finished(f) for f in finished)})


@dataclass(frozen=True)
class Accepted:
    """An async step's call the agent answered `202 Accepted`: its step run waits for the
    callback until `wait_s` after the step's start."""

    step_run_id: int
    status: int  # the 202
    wait_s: int
    wait: dict[str, Any]


_ACCEPT = text(
    f"""
    UPDATE step_runs s SET status = '{StepStatus.WAITING}', response_status = u.code,
        wait_until = s.started_at + make_interval(secs => u.wait_s), wait = CAST(u.wait AS jsonb)
    FROM json_to_recordset(CAST(:rows AS json)) AS u (id bigint, code int, wait_s int, wait json)
    WHERE s.id = u.id AND s.status = '{StepStatus.RUNNING}'
    """
)


def record_graph(
    session: Session,
    claim: Claim,
    *,
    lease_s: int,
    answers: list[tuple[int, StepOutcome]],
    marks: list[StepMark],
    closes: list[StepClose],
    accepted: list[Accepted] | None = None,
) -> dict[tuple[str, int | None], int] | None:
    """One state change of a graph run: store its calls' answers (as a chain's, fenced on the
    step run still running) and the async calls `accepted` (their rows wait, as fenced),
    then, if the run is still this claim's (`_fence`, its lease renewed), record `marks` and
    `closes`. The ids of the rows `marks` made by (key, item); None when the run is no longer
    this claim's (cancelled, taken over): nothing but the answers was written."""
    finish_steps(session, answers)
    if accepted:
        session.execute(
            _ACCEPT,
            {
                "rows": _rows(
                    {"id": a.step_run_id, "code": a.status, "wait_s": a.wait_s, "wait": a.wait}
                    for a in accepted
                )
            },
        )
    fenced = session.execute(
        update(Execution)
        .where(_fence(claim))
        .values(lease_expires_at=func.now() + timedelta(seconds=lease_s))
    )
    if not rowcount(fenced):
        return None
    made: dict[tuple[str, int | None], int] = {}
    if marks:
        rows = session.execute(
            _INSERT_MARKS,
            {
                "execution_id": claim.execution_id,
                "attempt": claim.attempt,
                "rows": _rows(
                    {
                        "step": m.step_number,
                        "key": m.key,
                        "item": m.item,
                        "status": m.status,
                        "request": m.request,
                        "error": m.error,
                        "body": m.body,
                        "wait": m.wait,
                        "wait_until": None if m.wait_until is None else m.wait_until.isoformat(),
                        "wait_s": m.wait_s,
                    }
                    for m in marks
                ),
            },
        )
        made = {(key, item): step_run_id for key, item, step_run_id in rows}
    if closes:
        session.execute(
            _CLOSE_STEPS,
            {
                "rows": _rows(
                    {"id": c.step_run_id, "status": c.status, "body": c.body, "error": c.error}
                    for c in closes
                )
            },
        )
    return made


# --- waits (docs/RELIABILITY.md, "Waits") -----------------------------------------------------

# The wait rows of a run that its coordinator holds as waiting (`ids`) and that are no
# longer: resolved (a callback, a decision, a cancel) or past their wait_until.
_MOVED_WAITS = text(
    f"""
    SELECT id, status, response_body, error, wait, wait_until <= now() AS past
    FROM step_runs WHERE id = ANY(:ids)
      AND (status <> '{StepStatus.WAITING}' OR wait_until <= now())
    """
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())))


def moved_waits(session: Session, ids: list[int]) -> list[Any]:
    """Of the wait rows `ids`, those resolved or past their wait_until (id, status,
    response_body, error, wait, past): what a coordinator with waiting steps takes in."""
    return list(session.execute(_MOVED_WAITS, {"ids": ids}).all()) if ids else []


# The park: the run's row, locked and fenced, first (a resolution locks it first too, so
# the two are serialised); then, in a statement whose snapshot follows the lock, the waits.
_PARK = text(
    f"""
    UPDATE executions e
    SET status = '{ExecutionStatus.WAITING}', lease_expires_at = NULL, available_at = w.until,
        wake_sent_at = CASE
            WHEN w.until <= now() + CAST(:horizon_s AS integer) * interval '1 second'
            THEN now() END
    FROM (
        SELECT min(wait_until) AS until FROM step_runs
        WHERE id = ANY(:ids) AND status = '{StepStatus.WAITING}'
    ) w
    WHERE e.id = :execution_id AND w.until IS NOT NULL
    RETURNING GREATEST(0, ceil(extract(epoch FROM w.until - now()) * 1000))::bigint AS delay_ms,
        e.wake_sent_at IS NOT NULL AS wake
    """
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())))


@dataclass(frozen=True)
class Parked:
    """What a park did: parked until `delay_ms` from now, its wake-up to send now (`wake`:
    within WAKE_HORIZON_S) or by housekeeping once it comes within; or not parked (`moved`:
    the waits to take in first)."""

    delay_ms: int | None = None
    moved: list[Any] = field(default_factory=list)
    wake: bool = False


def park(session: Session, claim: Claim, waiting: list[int]) -> Parked | None:
    """Park a graph run whose open steps all wait (`waiting`: their rows): `waiting`, no
    lease, `available_at` at the earliest wait_until of those waits (a row of a step its
    automation's edit removed is no wait of its graph any more). Not parked when one of
    them was resolved or has passed its wait_until meanwhile (`moved`: take them in and go
    on). None when the run is no longer this claim's.

    The lock order is the one every resolution follows (`db.waits`): the execution's row
    FOR UPDATE first, then the wait rows. A resolution committed before the lock is seen
    by the read after it; one that comes after the lock waits for the park's commit, then
    finds the run waiting and wakes it. So a wait is never resolved unseen.

    Its wake-up is sent by the park only when `available_at` is within WAKE_HORIZON_S
    (`wake`, recorded in `wake_sent_at`); a later one by housekeeping when it comes within
    (`db.recovery.wakes_due`), so no worker holds a wake-up for hours or days.
    """
    locked = session.execute(select(Execution.id).where(_fence(claim)).with_for_update()).scalar()
    if locked is None:
        return None
    moved = moved_waits(session, waiting)
    if moved:
        return Parked(moved=moved)
    parked = session.execute(
        _PARK,
        {"execution_id": claim.execution_id, "ids": waiting, "horizon_s": WAKE_HORIZON_S},
    ).one_or_none()
    if parked is None:  # no wait left open: nothing to park on (its coordinator goes on)
        return Parked(moved=[])
    return Parked(delay_ms=int(parked.delay_ms), wake=bool(parked.wake))


@dataclass(frozen=True)
class WaitEnd:
    """A wait past its wait_until, ended by its kind's rule: a sleep succeeds (with
    `{"slept_until"}`), an async step fails, an approval is decided by its on_timeout
    (`approved`, recorded as a decision by "timeout")."""

    step_run_id: int
    status: StepStatus
    body: str | None = None
    error: str | None = None
    approved: bool | None = None


_END_WAITS = text(
    f"""
    UPDATE step_runs s SET status = u.status,
        response_body = COALESCE(u.body, CASE WHEN s.wait ->> 'kind' = 'sleep'
            THEN jsonb_build_object('slept_until', s.wait_until)::text END),
        error = u.error, finished_at = now(),
        duration_ms = (extract(epoch FROM now() - s.started_at) * 1000)::int,
        wait = CASE WHEN u.approved IS NULL THEN s.wait ELSE s.wait || jsonb_build_object(
            'decided', jsonb_build_object('by', 'timeout', 'at', now(), 'approved', u.approved,
            'comment', NULL)) END
    FROM json_to_recordset(CAST(:rows AS json)) AS u (id bigint, status text, body text,
        error text, approved boolean)
    WHERE s.id = u.id AND s.status = '{StepStatus.WAITING}' AND s.wait_until <= now()
    RETURNING s.id, s.response_body
    """
)


def end_waits(
    session: Session, claim: Claim, *, lease_s: int, ends: list[WaitEnd]
) -> dict[int, str | None] | None:
    """End waits past their wait_until, each only while it still waits (a callback or a
    decision before the deadline wins); fenced on the claim (the run's row first, as a
    resolution locks it). The rows ended, with their stored output; None when the run is
    no longer this claim's."""
    fenced = session.execute(
        update(Execution)
        .where(_fence(claim))
        .values(lease_expires_at=func.now() + timedelta(seconds=lease_s))
    )
    if not rowcount(fenced):
        return None
    rows = session.execute(
        _END_WAITS,
        {
            "rows": _rows(
                {
                    "id": e.step_run_id,
                    "status": e.status,
                    "body": e.body,
                    "error": e.error,
                    "approved": e.approved,
                }
                for e in ends
            )
        },
    )
    return {step_run_id: body for step_run_id, body in rows}
