"""Form values to command inputs: plain functions, no Streamlit, tested on their own."""

from __future__ import annotations

import json
import zoneinfo
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from core.automation import AutomationInput, Step, Steps, steps_of
from core.cron import normalize_cron
from core.errors import ValidationFailed
from core.limits import DEFAULT_MAX_RETRIES, DEFAULT_STEP_TIMEOUT_S
from core.schedule import POLICY_FIELDS, PRESETS, ScheduleInput
from core.timing import ScheduleSpec
from core.vocabulary import ScheduleKind
from db.queries import ScheduleRow

CUSTOM_CRON = "custom_cron"
INTERVAL = "interval"
ONCE = "once"  # the preset's key
TIMINGS = {p.key: p.label for p in PRESETS} | {
    CUSTOM_CRON: "Custom cron expression",
    INTERVAL: "Every N seconds (interval)",
}
COMMON_ZONES = (
    "UTC",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Paris",
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Tokyo",
    "Australia/Sydney",
)
OTHER_ZONE = "Other (type an IANA name)…"
# The fields as their inputs name them, for a message shown away from its input.
FIELD_LABELS = {
    "timing": "When",
    "cron_expr": "Cron expression",
    "interval_s": "Every (seconds)",
    "run_at": "Run on",
    "timezone": "Timezone",
    "start_at": "Start at",
    "end_at": "End at",
    "max_runs": "Max runs",
    "misfire_policy": "Missed runs",
    "catchup_window": "Catch-up window",
    "overlap_policy": "If the previous run still runs",
    "jitter_s": "Jitter",
    "name": "Name",
    "agent_url": "Agent URL",
    "steps": "Steps",
    "project_context": "Project context",
    "step_timeout_s": "Step timeout",
    "max_retries": "Retries",
    "request_headers": "Request headers",
}


def timezone_options(viewer: str = "UTC") -> list[str]:
    """Common zones first (and the viewer's), then every IANA zone, then a free-text choice."""
    first = list(dict.fromkeys([*COMMON_ZONES, viewer]))
    rest = sorted(zoneinfo.available_timezones() - set(first))
    return [*first, *rest, OTHER_ZONE]


# What a schedule is when a person leaves a field as it is: the core's defaults.
_DEFAULTS = ScheduleInput(spec=ScheduleSpec(kind=ScheduleKind.CRON))


@dataclass(frozen=True)
class ScheduleForm:
    """The schedule dialog's inputs: a policy the form holds as the core takes it keeps the
    core's name and default (`AS_GIVEN`); the rest are in the units a person picks."""

    timing: str = "daily_9am"
    cron_expr: str = ""
    interval_s: int = 3600
    run_at: tuple[date, time] | None = None
    timezone: str = _DEFAULTS.spec.timezone
    start: tuple[date, time] | None = None
    end: tuple[date, time] | None = None
    max_runs: int = 0  # 0: no limit
    misfire_policy: str = _DEFAULTS.misfire_policy
    catchup_window_min: int = _DEFAULTS.catchup_window_s // 60
    overlap_policy: str = _DEFAULTS.overlap_policy
    jitter_s: int = _DEFAULTS.jitter_s
    enabled: bool = _DEFAULTS.enabled
    input_text: str = ""  # the runs' input as JSON text; blank: none


# The policies the form holds as the core takes them: copied by name both ways.
AS_GIVEN = tuple(name for name in POLICY_FIELDS if name in {f.name for f in fields(ScheduleForm)})


def zone_or_utc(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):
        return ZoneInfo("UTC")  # the timezone error itself is reported by validation


def local(value: tuple[date, time] | None, zone: str) -> datetime | None:
    """A date and wall time in `zone` as an aware datetime."""
    if value is None:
        return None
    day, clock = value
    return datetime.combine(day, clock, tzinfo=zone_or_utc(zone))


def cron_of(form: ScheduleForm) -> str | None:
    if form.timing == CUSTOM_CRON:
        return form.cron_expr
    return next((p.cron_expr for p in PRESETS if p.key == form.timing), None)


def spec_of_form(form: ScheduleForm) -> ScheduleSpec:
    if form.timing not in TIMINGS:
        raise ValidationFailed.single("timing", f"unknown choice {form.timing!r}")
    kind = _kind_of(form.timing)
    return ScheduleSpec(
        kind=kind,
        timezone=form.timezone.strip(),
        cron_expr=cron_of(form) if kind == ScheduleKind.CRON else None,
        interval_s=form.interval_s if kind == ScheduleKind.INTERVAL else None,
        run_at=local(form.run_at, form.timezone) if kind == ScheduleKind.ONCE else None,
        start_at=local(form.start, form.timezone),
        end_at=local(form.end, form.timezone),
        max_runs=form.max_runs or None,
    )


def _kind_of(timing: str) -> ScheduleKind:
    if timing == ONCE:
        return ScheduleKind.ONCE
    return ScheduleKind.INTERVAL if timing == INTERVAL else ScheduleKind.CRON


def schedule_input(form: ScheduleForm) -> ScheduleInput:
    return ScheduleInput(
        spec=spec_of_form(form),
        catchup_window_s=form.catchup_window_min * 60,
        input=form.input_text,
        **{name: getattr(form, name) for name in AS_GIVEN},
    )


def form_of_schedule(row: ScheduleRow) -> ScheduleForm:
    """The form as it opens for editing an existing schedule."""

    def parts(value: datetime | None) -> tuple[date, time] | None:
        if value is None:
            return None
        wall = value.astimezone(zone_or_utc(row.timezone))
        return wall.date(), wall.time().replace(tzinfo=None)

    if row.kind == ScheduleKind.ONCE:
        timing = ONCE
    elif row.kind == ScheduleKind.INTERVAL:
        timing = INTERVAL
    else:
        timing = preset_for(row.cron_expr or "") or CUSTOM_CRON
    return ScheduleForm(
        timing=timing,
        cron_expr=row.cron_expr or "",
        interval_s=row.interval_s or 3600,
        run_at=parts(row.run_at),
        timezone=row.timezone,
        start=parts(row.start_at),
        end=parts(row.end_at),
        max_runs=row.max_runs or 0,
        catchup_window_min=row.catchup_window_s // 60,
        input_text=input_text(row.input),
        **{name: getattr(row, name) for name in AS_GIVEN},
    )


def input_text(value: dict[str, Any] | None) -> str:
    """A run input as the form shows it: indented JSON, or blank for none."""
    return "" if value is None else json.dumps(value, indent=2, ensure_ascii=False)


def preset_for(cron_expr: str) -> str | None:
    try:
        normalized = normalize_cron(cron_expr)
    except ValidationFailed:
        return None
    return next((p.key for p in PRESETS if p.cron_expr == normalized), None)


def errors_by_field(exc: ValidationFailed) -> dict[str, str]:
    """First message per field; spec-level fields map onto the form's inputs."""
    aliases = {"anchor": "start_at", "kind": "timing", "catchup_window_s": "catchup_window"}
    errors: dict[str, str] = {}
    for error in exc.errors:
        field = aliases.get(error.field, error.field)
        if field == "steps" and field in errors:  # a graph's: every step's problem, a line each
            errors[field] += "\n" + error.message
        errors.setdefault(field, error.message)
    return errors


@dataclass(frozen=True)
class AutomationForm:
    """The automation form's inputs as its widgets give them (steps already read from
    the table or the text with `steps_from_rows` / `parse_steps_text`)."""

    name: str = ""
    agent_url: str = ""
    steps: Steps = ()
    description: str = ""
    project_context: str = ""
    timeout: float = DEFAULT_STEP_TIMEOUT_S
    retries: float = DEFAULT_MAX_RETRIES
    concurrency: float | None = None  # None: no limit
    rate: float | None = None  # None: no limit
    headers_text: str = ""  # "Name: value" lines
    urgent: bool = False


def automation_input(form: AutomationForm) -> AutomationInput:
    return AutomationInput(
        name=form.name,
        agent_url=form.agent_url,
        steps=form.steps,
        description=form.description,
        project_context=form.project_context,
        step_timeout_s=int(form.timeout),
        max_retries=int(form.retries),
        concurrency_limit=None if form.concurrency is None else int(form.concurrency),
        rate_limit_per_s=None if form.rate is None else float(form.rate),
        request_headers=parse_headers_text(form.headers_text),
        urgent=form.urgent,
    )


def parse_steps_text(text: str) -> tuple[Step, ...]:
    """One step per non-empty line: "name | message" (or just the message)."""
    steps = []
    for number, line in enumerate((x for x in text.splitlines() if x.strip()), start=1):
        name, sep, message = line.partition("|")
        if not sep:
            name, message = f"Step {number}", line
        steps.append(Step(name.strip(), message.strip()))
    return tuple(steps)


def parse_steps_yaml(text: str) -> Steps:
    """The steps written as YAML: a list of step objects, as the API and a definitions file
    take them (with keys, a graph). ValidationFailed (steps) when it is not such a list."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = "" if mark is None else f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(exc, "problem", None) or "it cannot be read"
        raise ValidationFailed.single(
            "steps", f"the YAML does not read: {problem}{where}"
        ) from None
    if data is None:
        data = []
    if not isinstance(data, list) or not all(isinstance(step, dict) for step in data):
        raise ValidationFailed.single(
            "steps", "the YAML must be a list of steps, each a mapping (- key: ..., message: ...)"
        )
    return steps_of(data)


def steps_yaml(steps: list[dict[str, Any]]) -> str:
    """Stored steps as the YAML editor shows them (a line's as name and message)."""
    if not steps:
        return ""
    text: str = yaml.safe_dump(steps, sort_keys=False, allow_unicode=True, width=88)
    return text


def steps_text(steps: list[dict[str, str]]) -> str:
    return "\n".join(f"{s.get('name', '')} | {s.get('message', '')}" for s in steps)


def steps_from_rows(rows: list[dict[str, object]]) -> tuple[Step, ...]:
    """Rows of the steps table (order, name, message) in their chosen order; blank rows dropped."""

    def text(row: dict[str, object], column: str) -> str:
        value = row.get(column)
        return "" if value is None or value != value else str(value)  # NaN != NaN

    def order(item: tuple[int, dict[str, object]]) -> tuple[float, int]:
        index, row = item
        try:
            return float(text(row, "order")), index
        except ValueError:
            return float(index + 1), index

    kept = [r for r in rows if text(r, "name").strip() or text(r, "message").strip()]
    ordered = [row for _, row in sorted(enumerate(kept), key=order)]
    return tuple(Step(text(r, "name").strip(), text(r, "message")) for r in ordered)


def now_utc() -> datetime:
    return datetime.now(UTC)


def parse_headers_text(text: str) -> tuple[tuple[str, str], ...]:
    """One header per non-empty line: "Name: value". A line without a colon becomes a
    header with an empty name, which validation names as "not a header name"."""
    headers = []
    for line in (x for x in text.splitlines() if x.strip()):
        name, sep, value = line.partition(":")
        headers.append((name.strip(), value.strip()) if sep else (line.strip(), ""))
    return tuple(headers)


def headers_text(headers: dict[str, str]) -> str:
    return "\n".join(f"{name}: {value}" for name, value in headers.items())
