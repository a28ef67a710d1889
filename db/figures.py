"""Figures for the overview and the per-schedule table: KPIs, outcomes over time,
what comes next, whether the scheduler is alive, success rates and durations.

Like `db.queries`, every function takes a session and the acting person (and reads
their workspace only; the scheduler's liveness is the deployment's), returns plain
dataclasses and never commits; each is shaped for an index so it stays fast at a million executions
(windows over finished runs walk `ix_executions_finished`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import ColumnElement, and_, case, func, literal, literal_column, null, select, text
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session

from core.access import Actor
from core.vocabulary import (
    CHART_STATUSES,
    OPEN_STATUSES,
    ExecutionStatus,
    Permission,
    Role,
    StepKind,
    StepStatus,
    Trigger,
)
from db.models import Automation, Execution, Heartbeat, Schedule, StepRun
from db.session import db_now
from db.workspaces import authorize

Bucket = Literal["hour", "day"]


@dataclass(frozen=True)
class Kpis:
    active_schedules: int
    runs_24h: int
    success_rate_24h: float | None  # succeeded / (succeeded + failed); None without runs
    success_rate_7d: float | None
    failures_24h: int  # failed runs in the last 24 h: what needs a look
    open_runs: int  # queued, running or waiting right now
    now: datetime
    waiting_runs: int = 0  # parked on a wait: the agent's callback, a person, a sleep
    approvals_pending: int = 0  # approval steps waiting for a decision


def success_rate(succeeded: int, failed: int) -> float | None:
    """Share of finished runs that succeeded; skipped and cancelled runs do not count."""
    total = succeeded + failed
    return None if total == 0 else succeeded / total


def _scope(session: Session, actor: Actor) -> uuid.UUID:
    authorize(session, actor, Permission.READ)
    return actor.workspace_id


def _finished_counts(
    session: Session, workspace_id: uuid.UUID, since: datetime
) -> tuple[int, int, int]:
    succeeded, failed, finished = session.execute(
        select(
            func.count().filter(Execution.status == ExecutionStatus.SUCCEEDED),
            func.count().filter(Execution.status == ExecutionStatus.FAILED),
            func.count(),
        ).where(Execution.workspace_id == workspace_id, Execution.finished_at >= since)
    ).one()
    return int(succeeded), int(failed), int(finished)


def kpis(session: Session, *, actor: Actor) -> Kpis:
    workspace_id = _scope(session, actor)
    now = db_now(session)
    ok_day, failed_day, finished_day = _finished_counts(
        session, workspace_id, now - timedelta(days=1)
    )
    ok_week, failed_week, _ = _finished_counts(session, workspace_id, now - timedelta(days=7))
    active = session.scalar(
        select(func.count())
        .select_from(Schedule)
        .where(Schedule.workspace_id == workspace_id, Schedule.enabled)
    )
    open_runs = session.scalar(
        select(func.count())
        .select_from(Execution)
        .where(Execution.workspace_id == workspace_id, Execution.status.in_(OPEN_STATUSES))
    )
    waiting, approvals = _waiting_counts(session, workspace_id)
    return Kpis(
        active_schedules=int(active or 0),
        runs_24h=finished_day,
        success_rate_24h=success_rate(ok_day, failed_day),
        success_rate_7d=success_rate(ok_week, failed_week),
        failures_24h=failed_day,
        open_runs=int(open_runs or 0),
        now=now,
        waiting_runs=waiting,
        approvals_pending=approvals,
    )


def _waiting_counts(session: Session, workspace_id: uuid.UUID) -> tuple[int, int]:
    """Runs waiting, and approval steps waiting for a decision: two counts over the partial
    indexes of what waits (`executions` and `step_runs` `WHERE status = 'waiting'`)."""
    runs = session.scalar(
        select(func.count())
        .select_from(Execution)
        .where(
            Execution.workspace_id == workspace_id,
            Execution.status == ExecutionStatus.WAITING,
        )
    )
    approvals = session.scalar(
        select(func.count())
        .select_from(StepRun)
        .join(Execution, Execution.id == StepRun.execution_id)
        .where(
            Execution.workspace_id == workspace_id,
            Execution.status.in_(OPEN_STATUSES),
            StepRun.status == StepStatus.WAITING,
            StepRun.wait["kind"].astext == StepKind.APPROVAL,
        )
    )
    return int(runs or 0), int(approvals or 0)


@dataclass(frozen=True)
class OutcomePoint:
    bucket: datetime  # start of the hour or day, UTC
    status: str
    count: int


def outcome_series(
    session: Session,
    *,
    actor: Actor,
    since: datetime,
    bucket: Bucket = "day",
    until: datetime | None = None,
) -> list[OutcomePoint]:
    """Finished runs per hour or day (UTC) and outcome, for the stacked chart.

    Every bucket from `since` to `until` (default: now) appears with every status
    of CHART_STATUSES, zero-filled, so the chart has no holes.
    """
    workspace_id = _scope(session, actor)
    until = until or db_now(session)
    start = func.date_trunc(bucket, Execution.finished_at, "UTC")
    rows = session.execute(
        select(start.label("bucket"), Execution.status, func.count())
        .where(
            Execution.workspace_id == workspace_id,
            Execution.finished_at >= since,
            Execution.finished_at < until,
            Execution.status.in_(CHART_STATUSES),
        )
        .group_by("bucket", Execution.status)
    ).all()
    counts = {(b, s): int(c) for b, s, c in rows}
    return [
        OutcomePoint(b, s, counts.get((b, s), 0))
        for b in bucket_starts(since, until, bucket)
        for s in CHART_STATUSES
    ]


def bucket_starts(since: datetime, until: datetime, bucket: Bucket) -> list[datetime]:
    """UTC bucket starts covering [since, until)."""
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    first = since.astimezone(until.tzinfo).replace(minute=0, second=0, microsecond=0)
    if bucket == "day":
        first = first.replace(hour=0)
    starts = []
    current = first
    while current < until:
        starts.append(current)
        current += step
    return starts


# The runs that are a schedule's own slots (not one started by hand, a retry or a backfill).
SLOT_TRIGGERS = (Trigger.SCHEDULE, Trigger.CATCHUP)


def next_run_column() -> ColumnElement[datetime | None]:
    """A schedule's next run as people read it: its earliest slot not yet run. Dispatch
    queues a slot up to its horizon ahead and moves `next_run_at` past it, so a slot queued
    and not started counts; a paused or completed schedule has none."""
    queued = (
        select(func.min(Execution.scheduled_for))
        .where(
            Execution.schedule_id == Schedule.id,
            Execution.status == ExecutionStatus.QUEUED,
            Execution.trigger.in_(SLOT_TRIGGERS),
        )
        .correlate(Schedule)
        .scalar_subquery()
    )
    # LEAST ignores NULLs: no queued slot leaves next_run_at, and the other way round.
    return case((Schedule.enabled, func.least(Schedule.next_run_at, queued)), else_=null())


@dataclass(frozen=True)
class UpcomingRun:
    schedule_id: uuid.UUID
    automation_name: str
    next_run_at: datetime
    timezone: str
    kind: str
    cron_expr: str | None


def upcoming_runs(session: Session, *, actor: Actor, limit: int = 10) -> list[UpcomingRun]:
    """The next runs of the workspace's active schedules, soonest first (`next_run_column`)."""
    workspace_id = _scope(session, actor)
    next_run = next_run_column().label("next_run_at")
    rows = session.execute(
        select(
            Schedule.id.label("schedule_id"),
            Automation.name.label("automation_name"),
            next_run,
            Schedule.timezone,
            Schedule.kind,
            Schedule.cron_expr,
        )
        .join(Automation, Automation.id == Schedule.automation_id)
        .where(
            Schedule.workspace_id == workspace_id,
            Schedule.enabled,
            Schedule.next_run_at.is_not(None),
        )
        .order_by(next_run)
        .limit(limit)
    ).all()
    return [UpcomingRun(**row._mapping) for row in rows]


def heartbeat_at(session: Session, name: str) -> datetime | None:
    return session.scalar(select(Heartbeat.at).where(Heartbeat.name == name))


def heartbeat_ages(session: Session) -> dict[str, float]:
    """Seconds since each periodic job last recorded its pass, on the database's clock."""
    rows = session.execute(select(Heartbeat.name, func.extract("epoch", func.now() - Heartbeat.at)))
    return {name: float(age) for name, age in rows}


@dataclass(frozen=True)
class Liveness:
    now: datetime
    dispatch_at: datetime | None

    def stale(self, max_age: timedelta = timedelta(minutes=2)) -> bool:
        """True when the scheduler has not ticked for `max_age` (or never did)."""
        return self.dispatch_at is None or self.now - self.dispatch_at > max_age


def scheduler_liveness(session: Session) -> Liveness:
    return Liveness(now=db_now(session), dispatch_at=heartbeat_at(session, "dispatch"))


# --- schedules ------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleStats:
    schedule_id: uuid.UUID
    automation_name: str
    runs: int
    succeeded: int
    failed: int
    p50_s: float | None
    p95_s: float | None

    @property
    def success_rate(self) -> float | None:
        return success_rate(self.succeeded, self.failed)


def schedule_stats(
    session: Session, *, actor: Actor, since: datetime, automation_id: uuid.UUID | None = None
) -> list[ScheduleStats]:
    """Per schedule: finished runs since `since`, outcomes, and duration p50 / p95 (seconds)."""
    workspace_id = _scope(session, actor)
    duration = func.extract("epoch", Execution.finished_at - Execution.started_at)
    finished = and_(
        Execution.workspace_id == workspace_id,
        Execution.finished_at >= since,
        Execution.schedule_id.is_not(None),
    )
    ran = Execution.status.in_((ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED))
    # Aggregated per schedule first, named after: the join then touches 1 row per
    # schedule instead of every run (and the sort by name no longer spills to disk).
    per_schedule = (
        select(
            Execution.schedule_id,
            Execution.automation_id,
            func.count().label("runs"),
            func.count().filter(Execution.status == ExecutionStatus.SUCCEEDED).label("succeeded"),
            func.count().filter(Execution.status == ExecutionStatus.FAILED).label("failed"),
            func.percentile_cont(0.5).within_group(duration).filter(ran).label("p50_s"),
            func.percentile_cont(0.95).within_group(duration).filter(ran).label("p95_s"),
        )
        .where(finished)
        .group_by(Execution.schedule_id, Execution.automation_id)
    )
    if automation_id is not None:
        per_schedule = per_schedule.where(Execution.automation_id == automation_id)
    stats = per_schedule.subquery()
    stmt = (
        select(stats, Automation.name.label("automation_name"))
        .join(Automation, Automation.id == stats.c.automation_id)
        .order_by(Automation.name, stats.c.schedule_id)
    )
    # The window's runs are sorted by schedule for the percentiles (~80,000 rows a week
    # at a million executions: 5.5 MB, which spilled to disk under the default 4 MB).
    session.execute(text("SET LOCAL work_mem = '32MB'"))
    return [
        ScheduleStats(
            schedule_id=r.schedule_id,
            automation_name=r.automation_name,
            runs=int(r.runs),
            succeeded=int(r.succeeded),
            failed=int(r.failed),
            p50_s=None if r.p50_s is None else float(r.p50_s),
            p95_s=None if r.p95_s is None else float(r.p95_s),
        )
        for r in session.execute(stmt).all()
    ]


# --- waits ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingApproval:
    """An approval step waiting for a person: whose run, which step, since when, until when
    (its deadline: then `on_timeout` decides), and the weakest role that may decide."""

    execution_id: uuid.UUID
    automation_name: str
    step_key: str
    role: str
    since: datetime
    until: datetime | None


def pending_approvals(session: Session, *, actor: Actor, limit: int = 10) -> list[PendingApproval]:
    """The workspace's approvals waiting for a decision, the nearest deadline first."""
    workspace_id = _scope(session, actor)
    rows = session.execute(
        select(
            StepRun.execution_id,
            Automation.name.label("automation_name"),
            StepRun.step_key,
            func.coalesce(StepRun.wait["role"].astext, Role.EDITOR).label("role"),
            StepRun.started_at.label("since"),
            StepRun.wait_until.label("until"),
        )
        .join(Execution, Execution.id == StepRun.execution_id)
        .join(Automation, Automation.id == Execution.automation_id)
        .where(
            Execution.workspace_id == workspace_id,
            Execution.status.in_(OPEN_STATUSES),
            StepRun.status == StepStatus.WAITING,
            StepRun.wait["kind"].astext == StepKind.APPROVAL,
        )
        .order_by(StepRun.wait_until.nulls_last(), StepRun.started_at, StepRun.id)
        .limit(limit)
    ).all()
    return [PendingApproval(**row._mapping) for row in rows]


# --- failure triage -----------------------------------------------------------------


# What differs between two failures of the same cause: ids and long numbers (byte counts,
# timestamps). Step numbers and HTTP statuses are short and stay: they tell causes apart.
_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_LONG_NUMBER = "[0-9]{4,}"
ERROR_TEXT_MAX = 300


@dataclass(frozen=True)
class FailureGroup:
    automation_id: uuid.UUID
    automation_name: str
    error: str  # the error with ids and long numbers replaced (what the group shares)
    count: int
    last_failed_at: datetime
    last_execution_id: uuid.UUID  # the newest failed run of the group


def failure_groups(
    session: Session, *, actor: Actor, since: datetime, limit: int = 10
) -> list[FailureGroup]:
    """Failed runs finished since `since`, grouped by automation and normalised error,
    the largest groups first (a range scan of `ix_executions_workspace_finished`)."""
    workspace_id = _scope(session, actor)
    error = func.left(
        func.regexp_replace(
            func.regexp_replace(
                func.coalesce(Execution.error, "(no error recorded)"), _UUID, "…", "g"
            ),
            _LONG_NUMBER,
            "N",
            "g",
        ),
        ERROR_TEXT_MAX,
    ).label("error_text")
    newest = func.array_agg(aggregate_order_by(Execution.id, Execution.finished_at.desc()))[
        literal(1)
    ]
    rows = session.execute(
        select(
            Execution.automation_id,
            Automation.name.label("automation_name"),
            error,
            func.count().label("count"),
            func.max(Execution.finished_at).label("last_failed_at"),
            newest.label("last_execution_id"),
        )
        .join(Automation, Automation.id == Execution.automation_id)
        .where(
            Execution.workspace_id == workspace_id,
            Execution.finished_at >= since,
            Execution.status == ExecutionStatus.FAILED,
        )
        # By the output name: the expression's own bind parameters would not match twice.
        .group_by(Execution.automation_id, Automation.name, literal_column("error_text"))
        .order_by(func.count().desc(), func.max(Execution.finished_at).desc())
        .limit(limit)
    ).all()
    return [
        FailureGroup(
            automation_id=r.automation_id,
            automation_name=r.automation_name,
            error=r.error_text,
            count=int(r[3]),  # Row.count is the tuple method
            last_failed_at=r.last_failed_at,
            last_execution_id=r.last_execution_id,
        )
        for r in rows
    ]
