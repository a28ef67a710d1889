"""Definitions as code: `stepwise apply -f FILE` and `stepwise export-defs`.

Automations are matched by name within the workspace. Schedules have no name in
the database, so a schedule is matched by its position under its automation
(oldest first); `export-defs` writes them in that order. Every write goes
through `db.commands` (validation, audit, workspace and role checks) as the
local admin of the default workspace (local mode), in one transaction for the
whole file: any error and nothing is written; `--dry-run` always rolls back.
Signing secrets are never exported; request headers keep `{{ secret.NAME }}`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.access import Actor
from core.automation import AutomationInput, Step
from core.errors import StepwiseError
from core.schedule import ScheduleInput, parse_schedule
from core.settings import get_settings
from core.timing import ScheduleSpec
from db import commands
from db.models import Automation, Schedule

# Every automation field, as written in the file (the steps are handled apart).
AUTOMATION_FIELDS = (
    "description",
    "agent_url",
    "project_context",
    "step_timeout_s",
    "max_retries",
    "owner_id",
    "request_headers",
    "concurrency_limit",
    "rate_limit_per_s",
    "urgent",
)
# Every schedule field, as written in the file: one mapping both ways (add a field here).
SCHEDULE_TIMING: tuple[str, ...] = ("kind", "cron_expr", "interval_s", "run_at", "timezone")
SCHEDULE_TIMING += ("start_at", "end_at", "max_runs")
SCHEDULE_POLICY: tuple[str, ...] = ("misfire_policy", "catchup_window_s", "overlap_policy")
SCHEDULE_POLICY += ("jitter_s", "enabled", "input")
SCHEDULE_FIELDS = SCHEDULE_TIMING + SCHEDULE_POLICY
_DATES = frozenset({"run_at", "start_at", "end_at"})
# What each scalar field must be in the file (YAML gives typed values).
_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("step_timeout_s", "max_retries", "concurrency_limit"), (int,)),
    **dict.fromkeys(("interval_s", "max_runs", "catchup_window_s", "jitter_s"), (int,)),
    "rate_limit_per_s": (int, float),
    **dict.fromkeys(("urgent", "enabled"), (bool,)),
    **dict.fromkeys(("name", "description", "agent_url", "project_context", "owner_id"), (str,)),
    **dict.fromkeys(("kind", "cron_expr", "timezone", "misfire_policy", "overlap_policy"), (str,)),
}
_TYPE_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}


def _check_types(path: str, where: str, item: dict[str, Any]) -> None:
    for name, value in item.items():
        wanted = _TYPES.get(name)
        if wanted is None or value is None:
            continue
        is_bool = isinstance(value, bool)
        if not isinstance(value, wanted) or (is_bool and bool not in wanted):
            shown = _TYPE_NAMES[wanted[-1]]
            raise DefinitionError(_where(path, where, name) + f": must be {shown}")


class DefinitionError(StepwiseError):
    """The file is not a valid definitions file; nothing was written."""


@dataclass
class Plan:
    lines: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.lines)


def _where(path: str, name: str, field_name: str | None = None) -> str:
    return f"{path}: {name}" + (f": {field_name}" if field_name else "")


def load(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise DefinitionError(f"{path}: YAML syntax error: {e}") from e
    except OSError as e:
        raise DefinitionError(f"{path}: {e.strerror}") from e
    if doc is None:
        return []
    if not isinstance(doc, dict) or set(doc) - {"automations"}:
        raise DefinitionError(f"{path}: the top level must be a mapping with `automations:` only")
    items = doc.get("automations") or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise DefinitionError(f"{path}: automations: must be a list of mappings")
    return items


def _automation_input(path: str, item: dict[str, Any]) -> AutomationInput:
    name = str(item.get("name") or "")
    where = name or "(automation without a name)"
    unknown = set(item) - {"name", "steps", "schedules", *AUTOMATION_FIELDS}
    if unknown:
        raise DefinitionError(_where(path, where, sorted(unknown)[0]) + ": unknown field")
    if not name:
        raise DefinitionError(_where(path, where, "name") + ": required")
    _check_types(path, where, item)
    steps = item.get("steps") or []
    if not isinstance(steps, list) or not all(
        isinstance(s, dict) and set(s) <= {"name", "message"} for s in steps
    ):
        raise DefinitionError(_where(path, where, "steps") + ": a list of {name, message}")
    values = {k: item[k] for k in AUTOMATION_FIELDS if k in item}
    headers = values.pop("request_headers", None) or {}
    if not isinstance(headers, dict):
        raise DefinitionError(_where(path, where, "request_headers") + ": a mapping")
    try:
        return AutomationInput(
            name=name,
            steps=tuple(Step(str(s.get("name", "")), str(s.get("message", ""))) for s in steps),
            request_headers=tuple((str(k), str(v)) for k, v in headers.items()),
            **values,
        )
    except TypeError as e:
        raise DefinitionError(_where(path, where) + f": {e}") from e


def _schedule_input(path: str, where: str, item: Any) -> ScheduleInput:
    if not isinstance(item, dict):
        raise DefinitionError(_where(path, where) + ": a schedule must be a mapping")
    unknown = set(item) - set(SCHEDULE_FIELDS)
    if unknown:
        raise DefinitionError(_where(path, where, sorted(unknown)[0]) + ": unknown field")
    _check_types(path, where, item)
    values = dict(item)
    for name in _DATES & set(values):
        value = values[name]
        if isinstance(value, str):
            try:
                values[name] = datetime.fromisoformat(value)
            except ValueError as e:
                raise DefinitionError(_where(path, where, name) + ": not an ISO date") from e
    timing = {k: values.pop(k) for k in SCHEDULE_TIMING if k in values}
    if "kind" not in timing:
        raise DefinitionError(_where(path, where, "kind") + ": required")
    return ScheduleInput(spec=ScheduleSpec(**timing), **values)


def dump_schedule(row: Schedule) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in SCHEDULE_FIELDS:
        value = getattr(row, name)
        if isinstance(value, datetime):
            value = value.isoformat()
        if value is not None:
            out[name] = value
    return out


def _diff(plan: Plan, label: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
    changed = [k for k in new if old.get(k) != new[k]]
    for k in changed:
        plan.lines.append(f"~ {label}: {k}: {_shown(old.get(k))!r} -> {_shown(new[k])!r}")
    return bool(changed)


def _shown(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _automations(session: Session, actor: Actor) -> list[Automation]:
    return list(
        session.scalars(
            select(Automation)
            .where(Automation.workspace_id == actor.workspace_id, Automation.archived_at.is_(None))
            .order_by(Automation.name)
        )
    )


def _schedules(session: Session, automation_id: uuid.UUID) -> list[Schedule]:
    """Oldest first; those created together in one order of their definitions."""
    rows = session.scalars(
        select(Schedule)
        .where(Schedule.automation_id == automation_id)
        .where(Schedule.completed_reason.is_distinct_from("automation deleted"))
    )
    return sorted(rows, key=lambda s: (s.created_at, repr(dump_schedule(s))))


def apply(session: Session, path: str, *, actor: Actor) -> Plan:
    """Create or update every definition of the file; the caller commits or rolls back."""
    plan = Plan()
    existing = {a.name: a for a in _automations(session, actor)}
    for item in load(path):
        data = _automation_input(path, item)
        label = f"automation {data.name!r}"
        row = existing.get(data.name)
        try:
            if row is None:
                row = commands.create_automation(session, data, actor=actor)
                plan.lines.append(f"+ {label}")
            else:
                new = commands.automation_values(data)
                old = {k: getattr(row, k) for k in new}
                if _diff(plan, label, old, new):
                    commands.update_automation(session, row.id, data, actor=actor)
        except StepwiseError as e:
            raise DefinitionError(_where(path, label) + f": {e}") from e
        _apply_schedules(session, path, label, row.id, item.get("schedules") or [], plan, actor)
    session.flush()
    return plan


def _apply_schedules(
    session: Session,
    path: str,
    label: str,
    automation_id: uuid.UUID,
    items: list[Any],
    plan: Plan,
    actor: Actor,
) -> None:
    """Unchanged schedules match as they are; the others pair up in order, extras are new."""
    retention = get_settings().retention_days
    wanted = []
    for i, item in enumerate(items):
        where = f"{label} schedule #{i + 1}"
        try:
            definition = parse_schedule(
                _schedule_input(path, where, item), retention_days=retention
            )
        except DefinitionError:
            raise
        except StepwiseError as e:
            raise DefinitionError(_where(path, where) + f": {e}") from e
        new = {**commands.schedule_values(definition), "enabled": definition.enabled}
        wanted.append((where, definition, new))
    free = _schedules(session, automation_id)
    pending = []
    for where, definition, new in wanted:
        same = next((s for s in free if {k: getattr(s, k) for k in new} == new), None)
        if same is None:
            pending.append((where, definition, new))
        else:
            free.remove(same)
    for where, definition, new in pending:
        try:
            if not free:
                commands.create_schedule(session, automation_id, definition, actor=actor)
                plan.lines.append(f"+ {where}")
                continue
            current = free.pop(0)
            _diff(plan, where, {k: getattr(current, k) for k in new}, new)
            commands.update_schedule(session, current.id, definition, actor=actor)
        except StepwiseError as e:
            raise DefinitionError(_where(path, where) + f": {e}") from e


def export(session: Session, *, actor: Actor) -> str:
    items = []
    for row in _automations(session, actor):
        commands.get_automation(session, row.id, actor=actor)  # role + workspace check
        item: dict[str, Any] = {"name": row.name}
        item["steps"] = [{"name": s["name"], "message": s["message"]} for s in row.steps]
        for name in AUTOMATION_FIELDS:
            value = getattr(row, name)
            if value is not None:
                item[name] = dict(value) if name == "request_headers" else value
        item["schedules"] = [dump_schedule(s) for s in _schedules(session, row.id)]
        items.append(item)
    text: str = yaml.safe_dump({"automations": items}, sort_keys=False, allow_unicode=True)
    return text
