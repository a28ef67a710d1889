"""Reads for the dashboard, the export and the benchmark.

Every function takes a session, the acting person (`actor`: nothing outside
their workspace is read, and a person who is not a member there reads nothing)
and plain filter values, returns plain dataclasses, and never commits. Each one is
shaped for an index of `db/models.py` so it stays fast at a million executions:
history lists walk `ix_executions_workspace_recent` / `ix_executions_status_recent` /
`ix_executions_automation_recent` with LIMIT, windows over finished runs walk
`ix_executions_finished`, open runs use the partial `ix_executions_open`.

(Over 400 lines: the pages' reads share their row types, filters and keyset paging;
split by page they would import one another.)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, func, literal, select, true, tuple_
from sqlalchemy.orm import Session

from core.access import Actor
from core.errors import ValidationFailed
from core.graph import Graph, graph_of, is_graph
from core.schedule import stopped_text
from core.timing import describe, parse_timing, spec_of
from core.vocabulary import (
    OPEN_STATUSES,
    ExecutionStatus,
    Permission,
    ScheduleKind,
    ScheduleState,
)
from db.figures import next_run_column, success_rate
from db.models import Automation, Execution, Schedule, StepRun
from db.workspaces import authorize

AnySelect = Select[*tuple[Any, ...]]
S = TypeVar("S", bound=AnySelect)


# --- filters ------------------------------------------------------------------


@dataclass(frozen=True)
class ExecutionFilters:
    """What the executions list and the export are narrowed to; empty means "all"."""

    statuses: tuple[str, ...] = ()
    automation_id: uuid.UUID | None = None
    schedule_id: uuid.UUID | None = None
    trigger: str | None = None
    since: datetime | None = None  # on queued_at, inclusive
    until: datetime | None = None  # on queued_at, exclusive
    error_contains: str = ""  # a part of the stored error, any case


def scope(session: Session, actor: Actor) -> uuid.UUID:
    """The workspace `actor` may read, after checking they are a member of it now."""
    authorize(session, actor, Permission.READ)
    return actor.workspace_id


def _columns(entity: Any, row: type, *apart: str) -> list[Any]:
    """The columns of `entity` that the fields of the dataclass `row` name, but those
    `apart` (read from elsewhere): a row type's fields are its query's columns."""
    return [getattr(entity, f.name) for f in fields(row) if f.name not in apart]


def filter_executions(stmt: S, workspace_id: uuid.UUID, filters: ExecutionFilters) -> S:
    """`stmt` narrowed to one workspace and by `filters` (the list, the count, the export)."""
    conditions: list[Any] = [Execution.workspace_id == workspace_id]
    if filters.statuses:
        conditions.append(Execution.status.in_(filters.statuses))
    if filters.automation_id is not None:
        conditions.append(Execution.automation_id == filters.automation_id)
    if filters.schedule_id is not None:
        conditions.append(Execution.schedule_id == filters.schedule_id)
    if filters.trigger:
        conditions.append(Execution.trigger == filters.trigger)
    if filters.since is not None:
        conditions.append(Execution.queued_at >= filters.since)
    if filters.until is not None:
        conditions.append(Execution.queued_at < filters.until)
    if filters.error_contains.strip():
        # `%` and `_` typed by a person are matched as themselves.
        conditions.append(
            Execution.error.icontains(filters.error_contains.strip(), autoescape=True)
        )
    return stmt.where(*conditions)


# Newest first, with the id as tie-breaker so pages never overlap or skip rows.
# Ties in queued_at (a dispatch queues several slots at once) read best by slot.
HISTORY_ORDER = (Execution.queued_at.desc(), Execution.scheduled_for.desc(), Execution.id.desc())


# --- executions ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExecutionRow:
    id: uuid.UUID
    automation_id: uuid.UUID
    automation_name: str
    schedule_id: uuid.UUID | None
    trigger: str
    status: str
    scheduled_for: datetime
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempt: int
    current_step: int
    total_steps: int
    error: str | None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def steps_done(self) -> str:
        """Steps finished, in words: current_step is the step last *started*."""
        if self.status == ExecutionStatus.SUCCEEDED:
            return f"{self.total_steps}/{self.total_steps}"
        if self.status == ExecutionStatus.RUNNING and self.current_step:
            return f"step {self.current_step} of {self.total_steps} running"
        if self.status == ExecutionStatus.WAITING:
            return f"{max(self.current_step - 1, 0)}/{self.total_steps}, waiting"
        done = max(self.current_step - 1, 0)
        if self.status == ExecutionStatus.FAILED and self.current_step:
            return f"{done}/{self.total_steps}, failed at step {self.current_step}"
        return f"{done}/{self.total_steps}"


@dataclass(frozen=True)
class Page:
    rows: list[ExecutionRow]
    offset: int
    limit: int
    has_more: bool


def _execution_columns() -> AnySelect:
    return select(
        *_columns(Execution, ExecutionRow, "automation_name"),
        Automation.name.label("automation_name"),
    ).join(Automation, Automation.id == Execution.automation_id)


@dataclass(frozen=True)
class HistoryKey:
    """Where a row stands in HISTORY_ORDER: the API's cursor (rows strictly after it)."""

    queued_at: datetime
    scheduled_for: datetime
    id: uuid.UUID

    @classmethod
    def of(cls, row: ExecutionRow) -> HistoryKey:
        return cls(row.queued_at, row.scheduled_for, row.id)


def list_executions(
    session: Session,
    filters: ExecutionFilters,
    *,
    actor: Actor,
    limit: int = 50,
    offset: int = 0,
    after: HistoryKey | None = None,
    settled: bool = False,
) -> Page:
    """One page of history, newest first; `has_more` without counting the whole table.

    `after` starts the page just past that row (keyset paging: stable while new runs
    arrive, and as fast on the thousandth page as on the first). `settled`: only runs
    that ended (those in flight are `executions_in_flight`).
    """
    workspace_id = scope(session, actor)
    stmt = filter_executions(_execution_columns(), workspace_id, filters).order_by(*HISTORY_ORDER)
    if after is not None:
        # Every column of HISTORY_ORDER descends, so "after" is one row comparison.
        stmt = stmt.where(
            tuple_(Execution.queued_at, Execution.scheduled_for, Execution.id)
            < tuple_(literal(after.queued_at), literal(after.scheduled_for), literal(after.id))
        )
    if settled:
        stmt = stmt.where(Execution.status.not_in(OPEN_STATUSES))
    rows = session.execute(stmt.limit(limit + 1).offset(offset)).all()
    return Page(
        rows=[ExecutionRow(**row._mapping) for row in rows[:limit]],
        offset=offset,
        limit=limit,
        has_more=len(rows) > limit,
    )


IN_FLIGHT_LIMIT = 50


def executions_in_flight(
    session: Session, filters: ExecutionFilters, *, actor: Actor, limit: int = IN_FLIGHT_LIMIT
) -> list[ExecutionRow]:
    """Open executions matching `filters`: running ones first (latest started first), then queued
    ones by the slot they run at. Open rows are few (the partial `ix_executions_open*`)."""
    workspace_id = scope(session, actor)
    stmt = (
        filter_executions(_execution_columns(), workspace_id, filters)
        .where(Execution.status.in_(OPEN_STATUSES))
        .order_by(
            (Execution.status == ExecutionStatus.RUNNING).desc(),
            Execution.started_at.desc().nulls_last(),
            Execution.scheduled_for,
            Execution.id,
        )
        .limit(limit)
    )
    return [ExecutionRow(**row._mapping) for row in session.execute(stmt).all()]


def count_executions(session: Session, filters: ExecutionFilters, *, actor: Actor) -> int:
    workspace_id = scope(session, actor)
    stmt = filter_executions(select(func.count()).select_from(Execution), workspace_id, filters)
    return int(session.scalar(stmt) or 0)


def executions_in_workspace(
    session: Session, execution_ids: set[uuid.UUID], *, actor: Actor
) -> set[uuid.UUID]:
    """Those of `execution_ids` that belong to the actor's workspace (the rest are not theirs
    to see: a dead letter of another workspace's run, say)."""
    workspace_id = scope(session, actor)
    if not execution_ids:
        return set()
    return set(
        session.scalars(
            select(Execution.id).where(
                Execution.id.in_(execution_ids), Execution.workspace_id == workspace_id
            )
        )
    )


def executions_by_id(
    session: Session, execution_ids: set[uuid.UUID], *, actor: Actor
) -> dict[uuid.UUID, ExecutionRow]:
    """Those of `execution_ids` in the actor's workspace, by id (a dead letter's execution:
    its automation and stored error). One primary-key lookup per id."""
    workspace_id = scope(session, actor)
    if not execution_ids:
        return {}
    rows = session.execute(
        _execution_columns().where(
            Execution.id.in_(execution_ids), Execution.workspace_id == workspace_id
        )
    ).all()
    return {row.id: ExecutionRow(**row._mapping) for row in rows}


@dataclass(frozen=True)
class StepRunRow:
    step_number: int
    step_name: str
    attempt: int
    status: str
    response_status: int | None
    duration_ms: int | None
    started_at: datetime
    finished_at: datetime | None
    request: dict[str, Any]
    response_body: str | None
    error: str | None
    step_key: str = ""  # a graph's step key (a chain's: step_<number>)
    item: int | None = None  # a fan-out's item (its index); None: the step's own row
    # A wait (an async call, an approval, a sleep): its deadline, and what it waits for
    # (`{"kind": ...}`, see db/models.py); None for a plain call.
    wait_until: datetime | None = None
    wait: dict[str, Any] | None = None


@dataclass(frozen=True)
class ExecutionDetail:
    execution: ExecutionRow
    result: Any
    steps: list[StepRunRow] = field(default_factory=list)
    input: dict[str, Any] | None = None  # what the run was started with
    trace_id: str | None = None  # its trace, when tracing was on (tasks/tracing.py)
    # The automation's graph as it is now, when its steps have keys (None: a chain).
    graph: Graph | None = None


def execution_detail(
    session: Session, execution_id: uuid.UUID, *, actor: Actor
) -> ExecutionDetail | None:
    """The execution and its step timeline (every attempt of every step, in order);
    None when it does not exist in the actor's workspace."""
    workspace_id = scope(session, actor)
    row = session.execute(
        _execution_columns().where(
            Execution.id == execution_id, Execution.workspace_id == workspace_id
        )
    ).first()
    if row is None:
        return None
    steps_json, result, run_input, trace_id = session.execute(
        select(Automation.steps, Execution.result, Execution.input, Execution.trace_id)
        .join(Execution, Execution.automation_id == Automation.id)
        .where(Execution.id == execution_id)
    ).one()
    runs = session.execute(
        select(*_columns(StepRun, StepRunRow, "step_name"))
        .where(StepRun.execution_id == execution_id)
        .order_by(StepRun.step_number, StepRun.attempt, StepRun.id)
    ).all()
    return ExecutionDetail(
        execution=ExecutionRow(**row._mapping),
        result=result,
        steps=[
            StepRunRow(**step_run._mapping, step_name=_step_name(step_run.step_number, steps_json))
            for step_run in runs
        ],
        input=run_input,
        trace_id=trace_id,
        graph=_graph(steps_json),
    )


def _graph(steps_json: list[Any]) -> Graph | None:
    """The graph of an automation's stored steps, None for a chain (or steps written around
    the save path that are not a graph: the page then shows the step runs as a list)."""
    if not is_graph(steps_json):
        return None
    try:
        return graph_of(steps_json)
    except ValidationFailed:
        return None


@dataclass(frozen=True)
class ExecutionGrid:
    """An automation's recent executions (newest first) and, per execution and step, the
    status of the step's last attempt: the grid's cells. A step with no cell did not start."""

    executions: list[ExecutionRow]
    step_names: list[str]
    cells: dict[tuple[uuid.UUID, int], str] = field(default_factory=dict)
    # Per execution and step, how long the step's last attempt took (ms), when it ended.
    durations_ms: dict[tuple[uuid.UUID, int], int | None] = field(default_factory=dict)


def execution_grid(
    session: Session, automation_id: uuid.UUID, *, actor: Actor, limit: int = 20
) -> ExecutionGrid:
    """The last `limit` executions of one automation with their steps' outcomes (two indexed
    reads: `ix_executions_automation_recent`, then `ix_step_runs_execution`)."""
    workspace_id = scope(session, actor)
    steps = session.scalar(
        select(Automation.steps).where(
            Automation.id == automation_id, Automation.workspace_id == workspace_id
        )
    )
    if steps is None:
        return ExecutionGrid(executions=[], step_names=[])
    rows = session.execute(
        _execution_columns()
        .where(Execution.automation_id == automation_id, Execution.workspace_id == workspace_id)
        .order_by(*HISTORY_ORDER)
        .limit(limit)
    ).all()
    runs = [ExecutionRow(**row._mapping) for row in rows]
    cells: dict[tuple[uuid.UUID, int], str] = {}
    durations: dict[tuple[uuid.UUID, int], int | None] = {}
    if runs:
        attempts = session.execute(
            select(StepRun.execution_id, StepRun.step_number, StepRun.status, StepRun.duration_ms)
            .where(StepRun.execution_id.in_([r.id for r in runs]))
            .order_by(
                StepRun.execution_id,
                StepRun.step_number,
                StepRun.attempt,
                StepRun.item.is_(None),  # a fan-out's own row says how the step stands
                StepRun.id,
            )
        ).all()
        for a in attempts:  # ordered: the last attempt of each step wins
            cells[(a.execution_id, a.step_number)] = a.status
            durations[(a.execution_id, a.step_number)] = a.duration_ms
    # A graph's rows are its step keys (a fan-out's: its own row, for all its items).
    names = [
        str(step.get("key") or step.get("name") or f"step {n}") for n, step in enumerate(steps, 1)
    ]
    return ExecutionGrid(executions=runs, step_names=names, cells=cells, durations_ms=durations)


def _step_name(step_number: int, steps: list[dict[str, str]]) -> str:
    """The name of step `step_number` (from 1) as the automation holds it now."""
    index = step_number - 1
    return steps[index].get("name", "") if 0 <= index < len(steps) else ""


# --- schedules ------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleRow:
    id: uuid.UUID
    automation_id: uuid.UUID
    automation_name: str
    kind: str
    cron_expr: str | None
    interval_s: int | None
    run_at: datetime | None
    timezone: str
    start_at: datetime | None
    end_at: datetime | None
    max_runs: int | None
    enabled: bool
    misfire_policy: str
    catchup_window_s: int
    overlap_policy: str
    jitter_s: int
    input: dict[str, Any] | None
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_status: str | None
    run_count: int
    success_count: int
    failure_count: int
    missed_count: int
    skipped_count: int
    completed_reason: str | None  # a CompletedReason
    parked_error: str | None
    paused_by: str | None
    paused_at: datetime | None
    pause_note: str | None
    created_at: datetime
    queued_runs: int
    next_run: datetime | None  # what people read as its next run (`next_run_column`)

    @property
    def state(self) -> ScheduleState:
        if self.enabled:
            return ScheduleState.ACTIVE
        return ScheduleState.COMPLETED if self.completed_reason else ScheduleState.PAUSED

    @property
    def stopped_because(self) -> str | None:
        """Why it stopped for good, as a person reads it; None unless completed."""
        if self.completed_reason is None:
            return None
        return stopped_text(self.completed_reason, self.parked_error)

    @property
    def success_rate(self) -> float | None:
        return success_rate(self.success_count, self.failure_count)

    @property
    def description(self) -> str:
        """The timing in words (the row was validated when it was written)."""
        return describe(parse_timing(spec_of(self)))


def list_schedules(
    session: Session,
    *,
    actor: Actor,
    automation_id: uuid.UUID | None = None,
    state: ScheduleState | None = None,
    schedule_id: uuid.UUID | None = None,
) -> list[ScheduleRow]:
    """Every schedule of live automations with its automation and its queued-run count."""
    workspace_id = scope(session, actor)
    queued = (
        select(Execution.schedule_id, func.count().label("queued_runs"))
        .where(
            Execution.workspace_id == workspace_id,
            Execution.status == ExecutionStatus.QUEUED,
            Execution.schedule_id.is_not(None),
        )
        .group_by(Execution.schedule_id)
        .subquery()
    )
    stmt = (
        select(
            *_columns(Schedule, ScheduleRow, "automation_name", "queued_runs", "next_run"),
            Automation.name.label("automation_name"),
            func.coalesce(queued.c.queued_runs, 0).label("queued_runs"),
            next_run_column().label("next_run"),
        )
        .join(Automation, Automation.id == Schedule.automation_id)
        .outerjoin(queued, queued.c.schedule_id == Schedule.id)
        .where(Schedule.workspace_id == workspace_id, Automation.archived_at.is_(None))
        .order_by(Automation.name, Schedule.created_at)
    )
    if automation_id is not None:
        stmt = stmt.where(Schedule.automation_id == automation_id)
    if schedule_id is not None:
        stmt = stmt.where(Schedule.id == schedule_id)
    if state == ScheduleState.ACTIVE:
        stmt = stmt.where(Schedule.enabled)
    elif state == ScheduleState.PAUSED:
        stmt = stmt.where(~Schedule.enabled, Schedule.completed_reason.is_(None))
    elif state == ScheduleState.COMPLETED:
        stmt = stmt.where(~Schedule.enabled, Schedule.completed_reason.is_not(None))
    return [ScheduleRow(**row._mapping) for row in session.execute(stmt).all()]


def get_schedule_row(
    session: Session, schedule_id: uuid.UUID, *, actor: Actor
) -> ScheduleRow | None:
    """One schedule as lists show it; None when it is not in the actor's workspace."""
    return next(iter(list_schedules(session, actor=actor, schedule_id=schedule_id)), None)


# --- automations --------------------------------------------------------------------


@dataclass(frozen=True)
class AutomationRow:
    id: uuid.UUID
    name: str
    description: str
    agent_url: str
    steps: list[dict[str, str]]
    project_context: str
    step_timeout_s: int
    max_retries: int
    request_headers: dict[str, str]
    concurrency_limit: int | None
    rate_limit_per_s: float | None
    urgent: bool
    created_at: datetime
    updated_at: datetime
    schedules: int


@dataclass(frozen=True)
class AutomationKey:
    """Where a page of automations ends, in their order (name, created, id)."""

    name: str
    created_at: datetime
    id: uuid.UUID

    @classmethod
    def of(cls, row: AutomationRow) -> AutomationKey:
        return cls(row.name, row.created_at, row.id)


def list_automations(
    session: Session,
    *,
    actor: Actor,
    limit: int | None = None,
    after: AutomationKey | None = None,
) -> list[AutomationRow]:
    """Live (not archived) automations, by name, with their schedule count: every one, or
    at most `limit` of those after `after`."""
    workspace_id = scope(session, actor)
    counts = (
        select(Schedule.automation_id, func.count().label("schedules"))
        .where(Schedule.workspace_id == workspace_id)
        .group_by(Schedule.automation_id)
        .subquery()
    )
    rows = session.execute(
        select(
            *_columns(Automation, AutomationRow, "schedules"),
            func.coalesce(counts.c.schedules, 0).label("schedules"),
        )
        .outerjoin(counts, counts.c.automation_id == Automation.id)
        .where(Automation.workspace_id == workspace_id, Automation.archived_at.is_(None))
        .where(
            true()
            if after is None
            else tuple_(Automation.name, Automation.created_at, Automation.id)
            > tuple_(literal(after.name), literal(after.created_at), literal(after.id))
        )
        .order_by(Automation.name, Automation.created_at, Automation.id)
        .limit(limit)
    ).all()
    return [AutomationRow(**row._mapping) for row in rows]


def automation_names(session: Session, *, actor: Actor) -> dict[uuid.UUID, str]:
    """Live automations for pickers, by name."""
    workspace_id = scope(session, actor)
    rows = session.execute(
        select(Automation.id, Automation.name)
        .where(Automation.workspace_id == workspace_id, Automation.archived_at.is_(None))
        .order_by(Automation.name)
    ).all()
    return {r.id: r.name for r in rows}


def schedule_labels(
    session: Session, automation_id: uuid.UUID | None = None, *, actor: Actor
) -> dict[uuid.UUID, str]:
    """Schedules for pickers: "<automation> · <cron or interval> (<timezone>)"."""
    workspace_id = scope(session, actor)
    stmt = (
        select(
            Schedule.id,
            Automation.name,
            Schedule.kind,
            Schedule.cron_expr,
            Schedule.interval_s,
            Schedule.timezone,
        )
        .join(Automation, Automation.id == Schedule.automation_id)
        .where(Schedule.workspace_id == workspace_id)
        .order_by(Automation.name, Schedule.created_at)
    )
    if automation_id is not None:
        stmt = stmt.where(Schedule.automation_id == automation_id)
    labels = {}
    for r in session.execute(stmt).all():
        timing = (
            r.cron_expr
            if r.kind == ScheduleKind.CRON
            else (f"every {r.interval_s} s" if r.kind == ScheduleKind.INTERVAL else "once")
        )
        labels[r.id] = f"{r.name} · {timing} ({r.timezone})"
    return labels


def recent_failures(session: Session, *, actor: Actor, limit: int = 10) -> list[ExecutionRow]:
    """The newest failed runs (what "needs attention" on the overview lists)."""
    failed = ExecutionFilters(statuses=(ExecutionStatus.FAILED,))
    return list_executions(session, failed, actor=actor, limit=limit).rows
