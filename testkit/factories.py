"""make_* helpers: the smallest valid objects, overridable field by field; reading rows back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import func, insert, select, update

from core.access import DEFAULT_WORKSPACE_ID, Actor
from core.automation import AutomationInput, Step
from core.schedule import ScheduleDefinition, ScheduleInput, parse_schedule
from core.settings import get_settings
from core.timing import ScheduleSpec
from core.vocabulary import ExecutionStatus, Permission, Role, ScheduleKind, Trigger
from db.models import Automation, Base, Execution, Membership, Schedule, StepRun, Workspace
from db.session import db_now, session_scope
from db.workspaces import authorize, ensure_default_workspace
from service import automations, executions, schedules
from service.unit import Unit

# The person every factory acts as: admin of the default workspace (`seed_access`).
ADMIN = Actor(name="test", workspace_id=DEFAULT_WORKSPACE_ID, role=Role.ADMIN)
# An HTTP channel to a closed local port: nothing sent to it arrives anywhere.
CHANNEL_URL = "json://hook:pw@127.0.0.1:9/hooks"


def seed_access() -> None:
    """The default workspace with ADMIN in it: what every test starts from."""
    with session_scope() as session:
        ensure_default_workspace(session)
        session.merge(Membership(workspace_id=DEFAULT_WORKSPACE_ID, subject="test", role="admin"))


def person(
    name: str, role: Role | str = Role.ADMIN, workspace_id: uuid.UUID = DEFAULT_WORKSPACE_ID
) -> Actor:
    """`name` as a member of the workspace with `role` (made so if needed), acting there."""
    actor = Actor(name=name, workspace_id=workspace_id, role=Role(role))
    with session_scope() as session:
        session.merge(Membership(workspace_id=workspace_id, subject=actor.subject, role=role))
    return actor


def make_workspace(name: str = "Other team", admin: str = "other-admin") -> Actor:
    """A second workspace, its admin acting in it."""
    with session_scope() as session:
        workspace = Workspace(name=name)
        session.add(workspace)
        session.flush()
        workspace_id = workspace.id
    return person(admin, Role.ADMIN, workspace_id)


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


@contextmanager
def _unit(actor: Actor, permission: Permission) -> Iterator[Unit]:
    """A unit of work as the service opens one, with its after-commit sends dropped: what a
    factory makes is not dispatched early nor sent (a test sends and ticks by itself)."""
    with session_scope() as session:
        authorize(session, actor, permission)
        yield Unit(session, actor)


def make_automation(*, actor: Actor = ADMIN, **overrides: Any) -> uuid.UUID:
    with _unit(actor, Permission.EDIT) as unit:
        return automations.create_in(unit, automation_input(**overrides)).id


def make_graph(steps: list[dict[str, Any]], *, actor: Actor = ADMIN, **overrides: Any) -> uuid.UUID:
    """An automation whose steps are the graph `steps` (the plain form, `core.graph.to_data`),
    checked as a save checks it (`parse_graph`) and stored as given."""
    from core.graph import parse_graph

    parse_graph(steps, egress=get_settings().egress_policy())
    automation_id = make_automation(actor=actor, steps=1, **overrides)
    with session_scope() as session:
        session.execute(
            update(Automation).where(Automation.id == automation_id).values(steps=steps)
        )
    return automation_id


def make_schedule(automation_id: uuid.UUID, *, actor: Actor = ADMIN, **overrides: Any) -> uuid.UUID:
    spec_fields = {
        k: overrides.pop(k) for k in list(overrides) if k in ScheduleSpec.__dataclass_fields__
    }
    spec_fields.setdefault("kind", ScheduleKind.CRON)
    if spec_fields["kind"] == ScheduleKind.CRON:
        spec_fields.setdefault("cron_expr", "* * * * *")
    data = schedule_definition(ScheduleInput(spec=ScheduleSpec(**spec_fields), **overrides))
    with _unit(actor, Permission.EDIT) as unit:
        return schedules.create_in(unit, automation_id, data).id


def make_channel(
    name: str = "on-call", url: str = CHANNEL_URL, *, actor: Actor = ADMIN
) -> uuid.UUID:
    """A notification channel of `actor`'s workspace sending to `url`."""
    from service import channels as channel_service

    return channel_service.add_channel(name, url, actor=actor).id


def schedule_definition(data: ScheduleInput) -> ScheduleDefinition:
    """`data` parsed as the dashboard and the API parse it (ValidationFailed if bad)."""
    return parse_schedule(data, retention_days=get_settings().retention_days)


def make_execution(automation_id: uuid.UUID, *, actor: Actor = ADMIN, **values: Any) -> uuid.UUID:
    with _unit(actor, Permission.RUN) as unit:
        execution_id = executions.start_in(unit, automation_id)
        execution = unit.session.get(Execution, execution_id)
        for key, value in values.items():
            setattr(execution, key, value)
        return execution_id


M = TypeVar("M", bound=Base)


def fetch(model: type[M], key: Any) -> M:
    """The row of `model` with primary key `key`, detached for reading after the session."""
    with session_scope() as session:
        row = session.get(model, key)
        assert row is not None, f"no {model.__name__} {key}"
        session.expunge(row)
        return row


def execution(execution_id: uuid.UUID) -> Execution:
    return fetch(Execution, execution_id)


def schedule(schedule_id: uuid.UUID) -> Schedule:
    return fetch(Schedule, schedule_id)


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


def now() -> datetime:
    """The database's clock."""
    with session_scope() as session:
        return db_now(session)


def add_executions(automation_id: uuid.UUID, rows: list[dict[str, Any]]) -> list[uuid.UUID]:
    """Insert executions directly: history with chosen statuses and times."""
    base = now()
    with session_scope() as session:
        workspace_id = session.scalar(
            select(Automation.workspace_id).where(Automation.id == automation_id)
        )
    full = []
    for n, row in enumerate(rows):
        queued = row.pop("queued_at", base - timedelta(minutes=n))
        values = {
            "id": uuid.uuid4(),
            "automation_id": automation_id,
            "workspace_id": workspace_id,
            "schedule_id": None,
            "trigger": Trigger.MANUAL,
            "scheduled_for": queued,
            "status": ExecutionStatus.SUCCEEDED,
            "queued_at": queued,
            "started_at": queued,
            "finished_at": queued + timedelta(seconds=1),
            "total_steps": 1,
        }
        values.update(row)
        full.append(values)
    with session_scope() as session:
        session.execute(insert(Execution), full)
    return [r["id"] for r in full]


def add_steps(execution_id: uuid.UUID, rows: list[dict[str, Any]]) -> None:
    """Insert step runs of an execution directly (chosen statuses, attempts, times)."""
    with session_scope() as session:
        session.execute(insert(StepRun), [{"execution_id": execution_id, **r} for r in rows])
