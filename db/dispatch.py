"""Turning due schedules into executions, one batch per transaction.

Due schedules are claimed with `FOR UPDATE SKIP LOCKED`, so schedulers running
side by side share the work instead of doubling it; the slot key
`(schedule_id, scheduled_for)` with `ON CONFLICT DO NOTHING` makes a duplicate
execution impossible even if two of them computed the same slot (a run of the schedule
started by hand, trigger `manual`, takes no slot: the key leaves it out).
"""

from __future__ import annotations

import logging
import math
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.limits import MAX_REASON
from core.schedule import DispatchPlan, plan_dispatch
from core.timing import parse_timing, spec_of
from core.vocabulary import CompletedReason, ExecutionStatus, MisfirePolicy, Trigger
from db.models import Automation, Execution, Heartbeat, Schedule
from db.runs import RunMessage
from db.workspaces import quotas

log = logging.getLogger(__name__)
DueSchedule = Any  # a row of `_DUE`: the schedule's columns under the model's names
MISSED_ERROR = "missed: nothing dispatched at this time (misfire policy {policy})"
QUOTA_ERROR = (
    "skipped: the workspace reached its quota of {limit} runs a minute "
    "(an admin can raise it on the Workspace page)"
)
# Positions in an execution row (`_EXECUTION_COLUMNS`).
_WORKSPACE, _SCHEDULED_FOR, _STATUS, _AVAILABLE_AT, _FINISHED_AT, _ERROR = 2, 5, 6, 8, 9, 10


@dataclass(frozen=True)
class DispatchConfig:
    horizon_s: int
    grace_s: int
    batch: int


@dataclass
class SlotTally:
    """What became of the slots dispatch handled: a run was sent for each `dispatched`
    one; the misfire policy or the catch-up window passed over each `missed` one; each
    `skipped` one was over its workspace's runs-a-minute quota."""

    dispatched: int = 0
    missed: int = 0
    skipped: int = 0

    def add(self, other: SlotTally) -> None:
        self.dispatched += other.dispatched
        self.missed += other.missed
        self.skipped += other.skipped


def _plan(schedule: DueSchedule, now: datetime, config: DispatchConfig) -> DispatchPlan:
    # Parsed once per dispatch: the row was valid when written, but a zone can
    # leave tzdata; that raises here and the schedule is parked. The row carries
    # every timing field under the model's names.
    return plan_dispatch(
        parse_timing(spec_of(schedule)),
        next_run_at=schedule.next_run_at,
        now=now,
        horizon=timedelta(seconds=config.horizon_s),
        grace=timedelta(seconds=config.grace_s),
        misfire_policy=MisfirePolicy(schedule.misfire_policy),
        catchup_window_s=schedule.catchup_window_s,
        dispatched=schedule.dispatched_count,
    )


# The due schedules of one batch with what planning and the runs need, locked so
# that dispatchers running side by side share the work instead of doubling it.
_DUE = (
    select(
        Schedule.id,
        Schedule.automation_id,
        Schedule.workspace_id,
        Schedule.kind,
        Schedule.timezone,
        Schedule.cron_expr,
        Schedule.interval_s,
        Schedule.run_at,
        Schedule.start_at,
        Schedule.end_at,
        Schedule.max_runs,
        Schedule.created_at,
        Schedule.next_run_at,
        Schedule.misfire_policy,
        Schedule.catchup_window_s,
        Schedule.dispatched_count,
        Schedule.jitter_s,
        Automation.max_retries,
        Automation.urgent,
        func.jsonb_array_length(Automation.steps).label("total_steps"),
    )
    .join(Automation, Automation.id == Schedule.automation_id)
    .where(Schedule.enabled, Schedule.next_run_at < bindparam("due_before"))
    .order_by(Schedule.next_run_at)
    .limit(bindparam("batch"))
    .with_for_update(of=Schedule, skip_locked=True)
)

# One statement for a whole batch's executions, whatever its size: the rows travel
# as one array per column (a few parameters, not thousands), and the slot key turns
# a slot that already has its execution into no row. A run to start takes its
# schedule's input from the row this transaction has locked (not through Python), one
# index lookup per run: a join let the planner scan every schedule for each batch,
# which made a large burst much slower to dispatch (bench/RESULTS.md, "Dispatch").
# The arrays go in binary (`%(name)b`, psycopg's own placeholders: `_execute` passes
# the text as is): psycopg writes a timestamp or a uuid of an array as text at several
# microseconds each, ten times the binary cost, and that was a sixth of the
# dispatcher's CPU (bench/RESULTS.md, "Dispatch at scale").
_INSERT_EXECUTIONS = f"""
    INSERT INTO executions (id, automation_id, workspace_id, schedule_id, trigger,
        scheduled_for, status, total_steps, available_at, finished_at, error, attempt,
        current_step, input)
    SELECT u.*, 0, 0, CASE WHEN u.status = '{ExecutionStatus.QUEUED}'
        THEN (SELECT s.input FROM schedules AS s WHERE s.id = u.schedule_id) END
    FROM unnest(
        %(id)b::uuid[], %(automation_id)b::uuid[], %(workspace_id)b::uuid[],
        %(schedule_id)b::uuid[], %(trigger)b::text[], %(scheduled_for)b::timestamptz[],
        %(status)b::text[], %(total_steps)b::int[], %(available_at)b::timestamptz[],
        %(finished_at)b::timestamptz[], %(error)b::text[]
    ) AS u (id, automation_id, workspace_id, schedule_id, trigger, scheduled_for, status,
        total_steps, available_at, finished_at, error)
    ON CONFLICT (schedule_id, scheduled_for) WHERE trigger <> '{Trigger.MANUAL}' DO NOTHING
    RETURNING id, available_at, status
    """

# Every schedule of the batch moves on in one statement (counters by increment).
_ADVANCE_SCHEDULES = """
    UPDATE schedules AS s SET
        next_run_at = u.next_run_at,
        dispatched_count = s.dispatched_count + u.dispatched,
        missed_count = s.missed_count + u.missed,
        enabled = u.enabled,
        completed_reason = CASE WHEN u.enabled THEN s.completed_reason ELSE u.reason END,
        updated_at = now()
    FROM unnest(
        %(id)b::uuid[], %(next_run_at)b::timestamptz[], %(dispatched)b::int[],
        %(missed)b::int[], %(enabled)b::boolean[], %(reason)b::text[]
    ) AS u (id, next_run_at, dispatched, missed, enabled, reason)
    WHERE s.id = u.id
    """

_EXECUTION_COLUMNS = (
    "id",
    "automation_id",
    "workspace_id",
    "schedule_id",
    "trigger",
    "scheduled_for",
    "status",
    "total_steps",
    "available_at",
    "finished_at",
    "error",
)
_ADVANCE_COLUMNS = ("id", "next_run_at", "dispatched", "missed", "enabled", "reason")


def _rows(due: DueSchedule, plan: DispatchPlan, now: datetime) -> list[tuple[Any, ...]]:
    """The executions of one schedule's plan, in `_EXECUTION_COLUMNS` order."""

    def row(slot: datetime, trigger: Trigger, status: ExecutionStatus, *rest: Any) -> Any:
        ids = (uuid.uuid4(), due.automation_id, due.workspace_id, due.id)
        return (*ids, str(trigger), slot, str(status), due.total_steps, *rest)

    rows: list[tuple[Any, ...]] = []
    for n, slot in enumerate(plan.run):
        jitter = timedelta(seconds=random.uniform(0, due.jitter_s))
        # Marked, so that the overlap policy queues catch-up runs one behind another.
        trigger = Trigger.CATCHUP if n < plan.catchup else Trigger.SCHEDULE
        available_at = max(slot + jitter, now)
        rows.append(row(slot, trigger, ExecutionStatus.QUEUED, available_at, None, None))
    error = MISSED_ERROR.format(policy=due.misfire_policy)
    skipped = ExecutionStatus.SKIPPED
    rows += [row(slot, Trigger.SCHEDULE, skipped, None, now, error) for slot in plan.skipped]
    return rows


def _execute(
    session: Session, statement: str, rows: list[tuple[Any, ...]], names: tuple[str, ...]
) -> Any:
    """Run one of the batch statements above with `rows` as one array per column."""
    columns = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    return session.connection().exec_driver_sql(statement, columns)


def dispatch_batch(
    session: Session,
    *,
    now: datetime,
    config: DispatchConfig,
    schedule_id: uuid.UUID | None = None,
    tally: SlotTally | None = None,
) -> tuple[list[RunMessage], int]:
    """Dispatch up to one batch of due schedules (only `schedule_id`, if given); returns
    the runs to send and the batch size, and adds the batch's slots to `tally`.

    Three statements whatever the batch's size: claim (`SKIP LOCKED`), insert the
    executions, advance the schedules (and one more per schedule that cannot be planned).
    """
    due_before = now + timedelta(seconds=config.horizon_s)
    claim = _DUE if schedule_id is None else _DUE.where(Schedule.id == schedule_id)
    # Core rows (not the ORM's): nothing here needs an entity, and the ORM's loading
    # of a batch of plain columns cost as much as planning it.
    params = {"due_before": due_before, "batch": config.batch}
    due = session.connection().execute(claim, params).all()
    if not due:
        return [], 0
    work: list[tuple[DueSchedule, DispatchPlan, list[tuple[Any, ...]]]] = []
    advances: list[tuple[Any, ...]] = []
    for schedule in due:
        try:
            plan = _plan(schedule, now, config)
        except Exception as exc:
            # One schedule that cannot be planned (e.g. a zone gone from tzdata)
            # must not stop every other schedule's dispatch: park it, visibly.
            log.exception("schedule %s cannot be planned; disabling it", schedule.id)
            _park(session, schedule.id, str(exc) or type(exc).__name__)
            continue
        work.append((schedule, plan, _rows(schedule, plan, now)))
    over_quota = _hold_to_quotas(session, work, now)
    all_rows = [row for *_, rows in work for row in rows]
    inserted: dict[uuid.UUID, datetime] = {}
    if all_rows:
        result = _execute(session, _INSERT_EXECUTIONS, all_rows, _EXECUTION_COLUMNS)
        inserted = {r.id: r.available_at for r in result if r.status == ExecutionStatus.QUEUED}
    enqueues = []
    for schedule, plan, rows in work:
        ids = [row[0] for row in rows if row[0] in inserted]
        quota = over_quota.get(schedule.id, 0)
        missed = len(plan.skipped) + plan.expired + quota
        if tally is not None:
            tally.dispatched += len(ids)
            tally.missed += missed - quota
            tally.skipped += quota
        completed = plan.next_run_at is None
        reason = None if plan.completed_reason is None else str(plan.completed_reason)
        advances.append((schedule.id, plan.next_run_at, len(ids), missed, not completed, reason))
        enqueues += [
            RunMessage.at_slot(
                i,
                max_retries=schedule.max_retries,
                # Rounded up: the start derived from it is never before the slot.
                delay_ms=math.ceil((inserted[i] - now).total_seconds() * 1000),
                urgent=schedule.urgent,
            )
            for i in ids
        ]
    _execute(session, _ADVANCE_SCHEDULES, advances, _ADVANCE_COLUMNS)
    return enqueues, len(due)


def _park(session: Session, schedule_id: uuid.UUID, error: str) -> None:
    """Disable a schedule dispatch cannot plan, with the error on its row."""
    session.execute(
        update(Schedule)
        .where(Schedule.id == schedule_id)
        .values(
            enabled=False,
            completed_reason=CompletedReason.PARKED,
            parked_error=error[:MAX_REASON],
        )
    )


def _hold_to_quotas(
    session: Session,
    work: list[tuple[DueSchedule, DispatchPlan, list[tuple[Any, ...]]]],
    now: datetime,
) -> dict[uuid.UUID, int]:
    """Record the runs beyond a workspace's runs-a-minute quota as skipped, with the
    reason, in place in `work`; returns how many per schedule.

    A quota protects a shared deployment from a runaway workspace; its slots are
    never dropped silently: each one over the quota is a row that says why. The
    earliest slots of a workspace run first.
    """
    queued: dict[uuid.UUID, list[tuple[int, int]]] = {}  # workspace -> (work index, row index)
    for w, (_, _, rows) in enumerate(work):
        for r, row in enumerate(rows):
            if row[_STATUS] == ExecutionStatus.QUEUED:
                queued.setdefault(row[_WORKSPACE], []).append((w, r))
    if not queued:
        return {}
    recent = dict(
        session.execute(
            select(Execution.workspace_id, func.count())
            .where(
                Execution.workspace_id.in_(queued),
                Execution.queued_at > now - timedelta(minutes=1),
            )
            .group_by(Execution.workspace_id)
        ).all()
    )
    held: dict[uuid.UUID, int] = {}
    for workspace_id, places in queued.items():
        limit = quotas(session, workspace_id).max_runs_per_minute
        room = max(0, limit - recent.get(workspace_id, 0))
        if len(places) <= room:
            continue
        places.sort(key=lambda p: work[p[0]][2][p[1]][_SCHEDULED_FOR])
        for w, r in places[room:]:
            rows = work[w][2]
            changed = list(rows[r])
            changed[_STATUS] = str(ExecutionStatus.SKIPPED)
            changed[_AVAILABLE_AT], changed[_FINISHED_AT] = None, now
            changed[_ERROR] = QUOTA_ERROR.format(limit=limit)
            rows[r] = tuple(changed)
            schedule_id = work[w][0].id
            held[schedule_id] = held.get(schedule_id, 0) + 1
        log.warning(
            "workspace %s is over its quota of %d runs a minute: %d run(s) skipped",
            workspace_id,
            limit,
            len(places) - room,
        )
    return held


def count_due(session: Session, *, now: datetime, horizon_s: int) -> int:
    """Due schedules left after a pass: ones another transaction held locked."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Schedule)
            .where(Schedule.enabled, Schedule.next_run_at < now + timedelta(seconds=horizon_s))
        )
        or 0
    )


def beat(session: Session, name: str, **details: Any) -> None:
    """Record that a periodic job ran (the dashboard warns when it goes quiet)."""
    session.execute(
        insert(Heartbeat)
        .values(name=name, at=func.now(), details=details)
        .on_conflict_do_update(index_elements=["name"], set_={"at": func.now(), "details": details})
    )
