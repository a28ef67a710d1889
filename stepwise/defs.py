"""Definitions as code: `stepwise apply -f FILE` and `stepwise export-defs`.

(Over 400 lines: one file format both ways, read, checked, compared with the database and
written back, whose field lists must agree.)

Automations are matched by name within the workspace. Schedules have no name in the
database: one matches an identical schedule under its automation, else updates the
unmatched one sharing most of its fields (oldest first among equals); the rest are
new. `export-defs` writes schedules oldest first. The whole file is one unit of work
(`service.definitions.apply`) as the acting member (`stepwise.cli`: the local admin
unless `--as`), each write the API's own (`service.automations`, `service.schedules`:
validation, audit, workspace and role checks, an early dispatch after a schedule
change): any error and nothing is written; `--dry-run` always rolls back. Signing
secrets are never exported; request headers keep `{{ secret.NAME }}` and
notifications name their channels (whose URLs are secrets too). A schedule's
`enabled` means "not paused": one that ended by its own timing still reads as enabled.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import Enum
from types import NoneType
from typing import Any, get_args, get_type_hints

import yaml
from sqlalchemy.orm import Session

from core.access import Actor
from core.automation import STEP_FIELDS, AutomationInput, steps_of
from core.backfill import pause_note
from core.errors import StepwiseError, ValidationFailed
from core.limits import MAX_OUTPUT_DEPTH
from core.schedule import POLICY_FIELDS, ScheduleDefinition, ScheduleInput, parse_schedule
from core.settings import get_settings
from core.timing import TIMING_FIELDS, ScheduleSpec
from db import automations, channels, definitions
from db.models import Automation, Schedule
from db.schedules import schedule_values
from service import automations as automation_writes
from service import channels as channel_writes
from service import schedules as schedule_writes
from service.unit import Unit

# Every automation field, as written in the file (the name and steps are handled apart).
AUTOMATION_FIELDS = tuple(
    f.name for f in fields(AutomationInput) if f.name not in ("name", "steps")
)
NOTIFICATION_FIELDS = frozenset({"channels", "failure_threshold"})
# Every schedule field, as written in the file: the core's, flat, one mapping both ways.
SCHEDULE_TIMING = TIMING_FIELDS
SCHEDULE_FIELDS = TIMING_FIELDS + POLICY_FIELDS + ("pause_note",)


def _scalars(*types: type) -> dict[str, tuple[type, ...]]:
    """What each scalar field of the dataclasses `types` must be in the file (YAML gives
    typed values): a whole number where an int is, any number where a float is."""
    wanted: dict[str, tuple[type, ...]] = {}
    for source in types:
        for name, hint in get_type_hints(source).items():
            kinds = set(get_args(hint) or (hint,)) - {NoneType}
            if kinds == {float}:
                wanted[name] = (int, float)
            elif len(kinds) == 1 and kinds <= {int, bool, str, datetime}:
                wanted[name] = (kinds.pop(),)
    return wanted


_IN_FILE = frozenset({"name", *AUTOMATION_FIELDS, *SCHEDULE_FIELDS})
_CHECKED = {
    name: kinds
    for name, kinds in _scalars(AutomationInput, ScheduleSpec, ScheduleInput).items()
    if name in _IN_FILE
}
_DATES = frozenset(name for name, kinds in _CHECKED.items() if kinds == (datetime,))
_TYPES = {name: kinds for name, kinds in _CHECKED.items() if name not in _DATES}
_TYPES |= {"pause_note": (str,), "failure_threshold": (int,)}
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


def _said(error: StepwiseError) -> str:
    """What a refused write says, its fields named as the file names them."""
    if isinstance(error, ValidationFailed):
        return "; ".join(f"{e.field}: {e.message}" for e in error.errors)
    return str(error)


def _where(path: str, name: str, field_name: str | None = None) -> str:
    return f"{path}: {name}" + (f": {field_name}" if field_name else "")


# How deep a definitions file may nest: a run's input nests up to MAX_OUTPUT_DEPTH under
# a few levels of automation and schedule. PyYAML's reader slows with the square of the
# depth and recurses: past this it stops at once.
MAX_FILE_DEPTH = MAX_OUTPUT_DEPTH + 20


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML is untyped
    """Safe YAML that refuses a key given twice in one mapping (plain YAML keeps the last)
    and a document nested deeper than MAX_FILE_DEPTH."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_FILE_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nests deeper than {MAX_FILE_DEPTH} levels", None
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _mapping(loader: _Loader, node: yaml.MappingNode) -> Any:
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable) and key_node.tag != "tag:yaml.org,2002:merge":
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


# A definitions file is read into at most this many values, aliases expanded: a few
# hundred bytes of nested aliases stand for billions (a "billion laughs").
MAX_FILE_VALUES = 1_000_000


def load(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = _read_yaml(path, f.read())
    except yaml.YAMLError as e:
        raise DefinitionError(f"{path}: YAML syntax error: {e}") from e
    except OSError as e:
        raise DefinitionError(f"{path}: {e.strerror}") from e
    except RecursionError:
        raise DefinitionError(f"{path}: nests deeper than this reader follows") from None
    if doc is None:
        return []
    if not isinstance(doc, dict) or set(doc) - {"automations"}:
        raise DefinitionError(f"{path}: the top level must be a mapping with `automations:` only")
    items = doc.get("automations") or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise DefinitionError(f"{path}: automations: must be a list of mappings")
    return items


def _read_yaml(path: str, text: str) -> Any:
    """The document, once its node graph is known to expand to at most MAX_FILE_VALUES."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded(node, {}) > MAX_FILE_VALUES:
            raise DefinitionError(
                f"{path}: expands to more than {MAX_FILE_VALUES:,} values (nested aliases?)"
            )
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values `node` stands for with every alias expanded, counted once per node
    (an alias is the very node it names), stopping early past MAX_FILE_VALUES."""
    if id(node) in sizes:
        return sizes[id(node)]
    total = 1
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    for child in children:
        total += _expanded(child, sizes)
        if total > MAX_FILE_VALUES:
            break
    sizes[id(node)] = total
    return total


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _automation_input(path: str, item: dict[str, Any]) -> AutomationInput:
    name = str(item.get("name") or "").strip()
    where = f"automation {name!r}" if name else "(automation without a name)"
    _check_types(path, where, item)
    unknown = set(item) - {"name", "steps", "schedules", "notifications", *AUTOMATION_FIELDS}
    if unknown:
        raise DefinitionError(_where(path, where, sorted(unknown)[0]) + ": unknown field")
    if not name:
        raise DefinitionError(_where(path, where, "name") + ": required")
    steps = item.get("steps") or []
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise DefinitionError(_where(path, where, "steps") + ": a list of steps")
    keyed = any(s.get("key") is not None for s in steps)
    if not keyed and not all(set(s) <= STEP_FIELDS and all(map(_text, s.values())) for s in steps):
        raise DefinitionError(
            _where(path, where, "steps")
            + ": a list of {name, message} texts, or a graph's steps, each with a key"
        )
    values = {k: item[k] for k in AUTOMATION_FIELDS if k in item}
    headers = values.pop("request_headers", None) or {}
    if not isinstance(headers, dict) or not all(
        _text(k) and isinstance(v, str | int | float) and not isinstance(v, bool)
        for k, v in headers.items()
    ):
        raise DefinitionError(_where(path, where, "request_headers") + ": a mapping of texts")
    try:
        return AutomationInput(
            name=name,
            steps=steps_of(steps),
            request_headers=tuple((k, str(v)) for k, v in headers.items()),
            **values,
        )
    except TypeError as e:
        raise DefinitionError(_where(path, where) + f": {e}") from e
    except ValidationFailed as e:
        raise DefinitionError(_where(path, where) + f": {_said(e)}") from e


def _notifications(path: str, where: str, item: dict[str, Any]) -> tuple[list[str], int]:
    """The channel names and failure threshold of the file (none given: no notifications)."""
    given = item.get("notifications") or {}
    if not isinstance(given, dict) or set(given) - NOTIFICATION_FIELDS:
        raise DefinitionError(
            _where(path, where, "notifications") + ": a mapping of channels and failure_threshold"
        )
    _check_types(path, where + ": notifications", given)
    names = given.get("channels") or []
    if not isinstance(names, list) or not all(map(_text, names)):
        raise DefinitionError(_where(path, where, "notifications: channels") + ": a list of names")
    return names, given.get("failure_threshold", 1)


def _date(path: str, where: str, name: str, value: Any) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    elif isinstance(value, datetime):
        return value
    raise DefinitionError(
        _where(path, where, name) + ": a date and time with its timezone, like 2030-01-01T02:00Z"
    )


def _schedule_input(path: str, where: str, item: Any) -> tuple[ScheduleInput, str | None]:
    if not isinstance(item, dict):
        raise DefinitionError(_where(path, where) + ": a schedule must be a mapping")
    unknown = set(item) - set(SCHEDULE_FIELDS)
    if unknown:
        raise DefinitionError(_where(path, where, sorted(unknown)[0]) + ": unknown field")
    _check_types(path, where, item)
    values = dict(item)
    for name in _DATES & set(values):
        if values[name] is not None:
            values[name] = _date(path, where, name, values[name])
    note = pause_note(values.pop("pause_note", None))
    if note is not None and values.get("enabled", True):
        raise DefinitionError(_where(path, where, "pause_note") + ": only with enabled: false")
    timing = {k: values.pop(k) for k in SCHEDULE_TIMING if k in values}
    if "kind" not in timing:
        raise DefinitionError(_where(path, where, "kind") + ": required")
    return ScheduleInput(spec=ScheduleSpec(**timing), **values), note


def _state(row: Schedule) -> dict[str, Any]:
    """The schedule as its definition: every field of the file, `enabled` meaning not paused."""
    state = {name: getattr(row, name) for name in SCHEDULE_FIELDS}
    # Ended by its own timing (ran once, reached its end): not paused by anyone.
    state["enabled"] = row.enabled or row.completed_reason is not None
    state["pause_note"] = None if state["enabled"] else row.pause_note
    return state


def dump_schedule(row: Schedule) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in _state(row).items():
        if value is not None:
            out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def _diff(plan: Plan, label: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
    changed = [k for k in new if old.get(k) != new[k]]
    for k in changed:
        plan.lines.append(f"~ {label}: {k}: {_shown(old.get(k))!r} -> {_shown(new[k])!r}")
    return bool(changed)


def _shown(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _schedules(session: Session, automation_id: uuid.UUID) -> list[Schedule]:
    """Oldest first; those created together in one order of their definitions."""
    rows = definitions.schedules_of(session, automation_id)
    return sorted(rows, key=lambda s: (s.created_at, repr(dump_schedule(s))))


def _by_name(session: Session, actor: Actor) -> dict[str, Automation | None]:
    """The workspace's automations by name; None for a name two of them share."""
    found: dict[str, Automation | None] = {}
    shared: set[str] = set()
    for row in definitions.live_automations(session, actor=actor):
        if row.name in found:
            shared.add(row.name)
        found[row.name] = row
    return found | dict.fromkeys(shared)


def apply(unit: Unit, path: str) -> Plan:
    """Create or update every definition of the file in `unit`, which commits or rolls back
    (`service.definitions.apply`)."""
    session, actor = unit.session, unit.actor
    plan = Plan()
    existing = _by_name(session, actor)
    named: set[str] = set()
    for item in load(path):
        data = _automation_input(path, item)
        label = f"automation {data.name!r}"
        if data.name in named:
            raise DefinitionError(_where(path, label, "name") + ": given twice in the file")
        named.add(data.name)
        if data.name in existing and existing[data.name] is None:
            raise DefinitionError(
                _where(path, label) + ": two automations of the workspace have this name; "
                "rename one in the dashboard first"
            )
        row = existing.get(data.name)
        try:
            if row is None:
                row = automation_writes.create_in(unit, data)
                plan.lines.append(f"+ {label}")
            else:
                new = automations.automation_values(data)
                old = {k: getattr(row, k) for k in new}
                if _diff(plan, label, old, new):
                    automation_writes.update_in(unit, row.id, data)
            _apply_notifications(unit, path, label, row.id, item, plan)
        except DefinitionError:
            raise
        except StepwiseError as e:
            raise DefinitionError(_where(path, label) + f": {_said(e)}") from e
        schedules = item.get("schedules") or []
        if not isinstance(schedules, list):
            raise DefinitionError(_where(path, label, "schedules") + ": a list of schedules")
        _apply_schedules(unit, path, label, row.id, schedules, plan)
    session.flush()
    return plan


def _apply_notifications(
    unit: Unit,
    path: str,
    label: str,
    automation_id: uuid.UUID,
    item: dict[str, Any],
    plan: Plan,
) -> None:
    session, actor = unit.session, unit.actor
    names, threshold = _notifications(path, label, item)
    ids = {name: id_ for id_, name in definitions.channel_names(session, actor=actor).items()}
    missing = [n for n in names if n not in ids]
    if missing:
        raise DefinitionError(
            _where(path, label, "notifications: channels")
            + f": no channel named {missing[0]!r} in this workspace"
        )
    current = channels.get_notifications(session, automation_id, actor=actor)
    by_id = {id_: name for name, id_ in ids.items()}
    old: dict[str, Any] = {"channels": sorted(by_id[i] for i in current.channel_ids)}
    new: dict[str, Any] = {"channels": sorted(set(names))}
    if current.channel_ids or names:  # without channels the threshold means nothing
        old["failure_threshold"], new["failure_threshold"] = current.failure_threshold, threshold
    if _diff(plan, f"{label} notifications", old, new):
        wanted = [ids[n] for n in new["channels"]]
        channel_writes.choose(unit, automation_id, wanted, threshold)


def _apply_schedules(
    unit: Unit, path: str, label: str, automation_id: uuid.UUID, items: list[Any], plan: Plan
) -> None:
    """Unchanged schedules match as they are; each other one updates the unmatched one
    sharing most of its fields (edited in place), and the rest are new."""
    retention = get_settings().retention_days
    wanted = []
    for i, item in enumerate(items):
        where = f"{label} schedule #{i + 1}"
        try:
            given, note = _schedule_input(path, where, item)
            definition = parse_schedule(given, retention_days=retention)
        except DefinitionError:
            raise
        except StepwiseError as e:
            raise DefinitionError(_where(path, where) + f": {_said(e)}") from e
        new = {**schedule_values(definition), "enabled": definition.enabled}
        wanted.append((where, definition, new | {"pause_note": note}))
    free = _schedules(unit.session, automation_id)
    pending = []
    for where, definition, new in wanted:
        same = next((s for s in free if _same(_state(s), new)), None)
        if same is None:
            pending.append((where, definition, new))
        else:
            free.remove(same)
    for where, definition, new in pending:
        try:
            _write_schedule(unit, automation_id, free, where, definition, new, plan)
        except StepwiseError as e:
            raise DefinitionError(_where(path, where) + f": {_said(e)}") from e


def _same(state: dict[str, Any], new: dict[str, Any]) -> bool:
    return all(state[k] == v for k, v in new.items())


def _write_schedule(
    unit: Unit,
    automation_id: uuid.UUID,
    free: list[Schedule],
    where: str,
    definition: ScheduleDefinition,
    new: dict[str, Any],
    plan: Plan,
) -> None:
    """Update the unmatched schedule closest to `new` (the first of equals), else create."""
    note = new["pause_note"]
    if free:
        row = max(free, key=lambda s: sum(v == new[k] for k, v in _state(s).items()))
        free.remove(row)
        old = _state(row)
        _diff(plan, where, old, new)
        if not _same(old, {k: v for k, v in new.items() if k != "pause_note"}):
            schedule_writes.update_in(unit, row.id, definition)
    else:
        row = schedule_writes.create_in(unit, automation_id, definition)
        plan.lines.append(f"+ {where}")
    if not definition.enabled and row.pause_note != note:
        schedule_writes.pause_in(unit, row.id, note)


def export(session: Session, *, actor: Actor) -> str:
    """The workspace's definitions as a file (`stepwise export-defs`), read in `session`."""
    items = []
    names = definitions.channel_names(session, actor=actor)
    for row in definitions.live_automations(session, actor=actor):
        automations.get_automation(session, row.id, actor=actor)  # role + workspace check
        item: dict[str, Any] = {"name": row.name}
        item["steps"] = [  # a line's as {name, message}, a graph's in its plain form
            dict(s) if "key" in s else {"name": s["name"], "message": s["message"]}
            for s in row.steps
        ]
        for name in AUTOMATION_FIELDS:
            value = getattr(row, name)
            if value is not None:
                item[name] = dict(value) if name == "request_headers" else value
        notify = channels.get_notifications(session, row.id, actor=actor)
        if notify.channel_ids:
            item["notifications"] = {
                "channels": sorted(names[i] for i in notify.channel_ids),
                "failure_threshold": notify.failure_threshold,
            }
        item["schedules"] = [dump_schedule(s) for s in _schedules(session, row.id)]
        items.append(item)
    text: str = yaml.safe_dump({"automations": items}, sort_keys=False, allow_unicode=True)
    return text
