"""make_* helpers: the smallest valid objects, overridable field by field."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from db import commands
from db.models import Base, Execution, StepRun
from db.session import session_scope
from stepwise.automation import AutomationInput, Step
from stepwise.schedule import ScheduleSpec


def automation_input(**overrides: Any) -> AutomationInput:
    steps = overrides.pop("steps", 3)
    if isinstance(steps, int):
        steps = tuple(Step(f"step {n}", f"do part {n}") for n in range(1, steps + 1))
    values: dict[str, Any] = {
        "name": "Nightly report",
        "agent_url": "http://127.0.0.1:9/agent",
        "steps": steps,
        "project_context": "project X",
        "step_timeout_s": 5,
        "max_retries": 3,
    }
    values.update(overrides)
    return AutomationInput(**values)


def make_automation(**overrides: Any) -> uuid.UUID:
    with session_scope() as session:
        return commands.create_automation(session, automation_input(**overrides), actor="test").id


def make_schedule(automation_id: uuid.UUID, **overrides: Any) -> uuid.UUID:
    spec_fields = {
        k: overrides.pop(k) for k in list(overrides) if k in ScheduleSpec.__dataclass_fields__
    }
    spec_fields.setdefault("kind", "cron")
    if spec_fields["kind"] == "cron":
        spec_fields.setdefault("cron_expr", "* * * * *")
    with session_scope() as session:
        data = commands.ScheduleInput(spec=ScheduleSpec(**spec_fields), **overrides)
        return commands.create_schedule(session, automation_id, data, actor="test").id


def make_execution(automation_id: uuid.UUID, **values: Any) -> uuid.UUID:
    with session_scope() as session:
        execution = commands.create_manual_execution(session, automation_id, actor="test")
        for key, value in values.items():
            setattr(execution, key, value)
        return execution.id


def execution(execution_id: uuid.UUID) -> Execution:
    with session_scope() as session:
        row = session.get(Execution, execution_id)
        assert row is not None
        session.expunge(row)
        return row


def executions_of(schedule_id: uuid.UUID) -> list[Execution]:
    """A schedule's executions in slot order."""
    with session_scope() as session:
        rows = session.scalars(
            select(Execution)
            .where(Execution.schedule_id == schedule_id)
            .order_by(Execution.scheduled_for)
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def step_runs(execution_id: uuid.UUID) -> list[StepRun]:
    with session_scope() as session:
        rows = session.scalars(
            select(StepRun).where(StepRun.execution_id == execution_id).order_by(StepRun.id)
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def row_counts() -> dict[str, int]:
    with session_scope() as session:
        return {
            t.name: session.scalar(select(func.count()).select_from(t)) or 0
            for t in Base.metadata.sorted_tables
        }


def table_snapshot() -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, for "nothing was written" checks."""
    with session_scope() as session:
        return {
            t.name: sorted(map(tuple, session.execute(select(t)).all()), key=repr)
            for t in Base.metadata.sorted_tables
        }


def utc(*args: int) -> datetime:
    from datetime import UTC

    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]
