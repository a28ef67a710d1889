"""What the API reads and writes, as pydantic models (and so as the OpenAPI schema).

Input models check only what JSON cannot say for itself (types, and text that
PostgreSQL cannot store); every rule of the domain is checked once, below, by the
same `core` functions the dashboard's forms use, so a refused field carries the
same message on both. Output models are built from the `db` layer's rows.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Body, Header
from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.automation import AutomationInput, Step, redact_url
from core.limits import (
    DEFAULT_CATCHUP_WINDOW_S,
    DEFAULT_MAX_RETRIES,
    DEFAULT_STEP_TIMEOUT_S,
    MAX_NAME,
    MAX_OWNER,
    MAX_PAUSE_NOTE,
)
from core.run_input import RunInput, parse_run_input
from core.schedule import ScheduleDefinition, ScheduleInput, parse_schedule
from core.settings import get_settings
from core.timing import ScheduleSpec
from core.vocabulary import MisfirePolicy, OverlapPolicy, ScheduleKind
from db.audit import AuditRow
from db.hooks import HookInfo
from db.models import Automation
from db.queries import AutomationRow, ExecutionDetail, ExecutionRow, ScheduleRow, StepRunRow

# The database's integers are 32-bit: a bigger number is refused here, not by a crash.
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]


def _storable(value: Any) -> Any:
    """Refuse text PostgreSQL cannot store (NUL, unpaired surrogates), at any depth."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain the NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(key)
            _storable(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _storable(item)
    return value


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _text_is_storable(cls, value: Any) -> Any:
        return _storable(value)


def _words(enum: type[Any]) -> dict[str, Any]:
    return {"enum": [str(member) for member in enum]}


# --- automations ----------------------------------------------------------------------


class StepIn(Input):
    name: str = ""
    message: str


class AutomationIn(Input):
    """An automation as created or replaced (PUT sends every field)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Nightly report",
                    "agent_url": "https://agent.example.com/run",
                    "steps": [
                        {"name": "gather", "message": "Gather yesterday's numbers"},
                        {"name": "write", "message": "Write the report"},
                    ],
                }
            ]
        }
    )

    name: str
    agent_url: str = Field(description="http(s) URL the workers POST each step to")
    steps: list[StepIn] = Field(description="1 to 50 steps, run in order")
    description: str = ""
    project_context: str = ""
    step_timeout_s: Int32 = DEFAULT_STEP_TIMEOUT_S
    max_retries: Int32 = DEFAULT_MAX_RETRIES
    request_headers: dict[str, str] = Field(
        default_factory=dict,
        description="sent with every call; credentials as {{ secret.NAME }} (workspace secrets)",
    )
    concurrency_limit: Int32 | None = None
    rate_limit_per_s: float | None = None
    urgent: bool = Field(
        default=False, description="runs go to the urgent queue, ahead of any backlog"
    )

    def parsed(self, owner: str) -> AutomationInput:
        return AutomationInput(
            name=self.name,
            agent_url=self.agent_url,
            steps=tuple(Step(s.name, s.message) for s in self.steps),
            description=self.description,
            project_context=self.project_context,
            step_timeout_s=self.step_timeout_s,
            max_retries=self.max_retries,
            owner_id=owner[:MAX_OWNER],
            request_headers=tuple(self.request_headers.items()),
            concurrency_limit=self.concurrency_limit,
            rate_limit_per_s=self.rate_limit_per_s,
            urgent=self.urgent,
        )


class StepOut(BaseModel):
    name: str
    message: str


class AutomationOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    agent_url: str = Field(description="secret-looking query values and passwords shown REDACTED")
    steps: list[StepOut]
    project_context: str
    step_timeout_s: int
    max_retries: int
    request_headers: dict[str, str]
    concurrency_limit: int | None
    rate_limit_per_s: float | None
    urgent: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Automation | AutomationRow) -> AutomationOut:
        return cls(
            id=row.id,
            name=row.name,
            description=row.description,
            agent_url=redact_url(row.agent_url),
            steps=[
                StepOut(name=s.get("name", ""), message=s.get("message", "")) for s in row.steps
            ],
            project_context=row.project_context,
            step_timeout_s=row.step_timeout_s,
            max_retries=row.max_retries,
            request_headers=dict(row.request_headers),
            concurrency_limit=row.concurrency_limit,
            rate_limit_per_s=row.rate_limit_per_s,
            urgent=row.urgent,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class AutomationCreated(AutomationOut):
    signing_secret: str | None = Field(
        description="signs every call to the agent (Stepwise-Signature); shown this once"
    )


class Archived(BaseModel):
    archived: bool = True
    cancelled_runs: int


class RunStarted(BaseModel):
    execution_id: uuid.UUID


INPUT_DESCRIPTION = "a JSON object (at most 64 KiB) the agent receives with every step as `input`"


class RunIn(Input):
    """What a manual run starts with (the body is optional)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"input": {"region": "eu"}}]})

    input: dict[str, Any] | None = Field(default=None, description=INPUT_DESCRIPTION)

    def parsed(self) -> RunInput | None:
        return parse_run_input(self.input)


class HookOut(BaseModel):
    """An automation's inbound webhook: POST a JSON object to `url` to start a run."""

    id: uuid.UUID
    automation_id: uuid.UUID
    url: str
    created_by: str
    created_at: datetime
    rotated_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, info: HookInfo, url: str) -> HookOut:
        return cls(
            id=info.id,
            automation_id=info.automation_id,
            url=url,
            created_by=info.created_by,
            created_at=info.created_at,
            rotated_at=info.rotated_at,
            last_used_at=info.last_used_at,
        )


class HookSecretOut(HookOut):
    secret: str = Field(
        description="send as Stepwise-Hook-Secret, or sign bodies with it; shown this once"
    )


class HookDisabled(BaseModel):
    disabled: bool = True


# --- schedules -------------------------------------------------------------------------


class TimingIn(Input):
    """A schedule's timing and policies: cron, interval or once, in an IANA timezone."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"kind": "cron", "cron_expr": "0 9 * * 1-5", "timezone": "Europe/Berlin"}]
        }
    )

    kind: str = Field(json_schema_extra=_words(ScheduleKind))
    timezone: str = "UTC"
    cron_expr: str | None = Field(default=None, description="5 fields, or @hourly-style macros")
    interval_s: Int32 | None = Field(default=None, description="at least 10")
    run_at: datetime | None = Field(default=None, description="once: when, with an offset")
    start_at: datetime | None = None
    end_at: datetime | None = None
    max_runs: Int32 | None = None
    misfire_policy: str = Field(
        default=MisfirePolicy.RUN_ONCE, json_schema_extra=_words(MisfirePolicy)
    )
    catchup_window_s: Int32 = DEFAULT_CATCHUP_WINDOW_S
    overlap_policy: str = Field(default=OverlapPolicy.SKIP, json_schema_extra=_words(OverlapPolicy))
    jitter_s: Int32 = 0
    enabled: bool = True
    input: dict[str, Any] | None = Field(
        default=None, description=f"every run's input: {INPUT_DESCRIPTION}"
    )

    def parsed(self) -> ScheduleDefinition:
        """Every rule checked, as the dashboard's schedule form checks it."""
        spec = ScheduleSpec(
            kind=self.kind,
            timezone=self.timezone,
            cron_expr=self.cron_expr,
            interval_s=self.interval_s,
            run_at=self.run_at,
            start_at=self.start_at,
            end_at=self.end_at,
            max_runs=self.max_runs,
        )
        data = ScheduleInput(
            spec=spec,
            misfire_policy=self.misfire_policy,
            catchup_window_s=self.catchup_window_s,
            overlap_policy=self.overlap_policy,
            jitter_s=self.jitter_s,
            enabled=self.enabled,
            input=self.input,
        )
        return parse_schedule(data, retention_days=get_settings().retention_days)


class ScheduleIn(TimingIn):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "automation_id": "0b7e6a52-8d1c-4f3e-9a5b-2c6d8e1f4a73",
                    "kind": "cron",
                    "cron_expr": "*/5 * * * *",
                    "timezone": "Europe/Berlin",
                    "input": {"region": "eu"},
                }
            ]
        }
    )

    automation_id: uuid.UUID


class PreviewIn(TimingIn):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "kind": "cron",
                    "cron_expr": "0 9 * * 1-5",
                    "timezone": "America/New_York",
                    "count": 5,
                }
            ]
        }
    )

    count: int = Field(default=10, ge=1, le=50, description="how many next runs to list")


class Preview(BaseModel):
    description: str
    timezone: str
    next_runs: list[datetime] = Field(description="UTC instants; empty if none is left")


class ScheduleOut(BaseModel):
    id: uuid.UUID
    automation_id: uuid.UUID
    automation_name: str
    state: str = Field(json_schema_extra={"enum": ["active", "paused", "completed"]})
    description: str
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
    completed_reason: str | None
    paused_by: str | None = Field(description="who paused it (null unless paused by someone)")
    paused_at: datetime | None
    pause_note: str | None = Field(description="why, as they wrote it")
    created_at: datetime
    queued_runs: int

    @classmethod
    def of(cls, row: ScheduleRow) -> ScheduleOut:
        values = {name: getattr(row, name) for name in ScheduleRow.__dataclass_fields__}
        return cls(**values, state=str(row.state), description=row.describe())


class PauseIn(Input):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"note": "agent down for maintenance"}]}
    )

    note: str | None = Field(
        default=None, description=f"why it is paused, shown with it (at most {MAX_PAUSE_NOTE})"
    )


class BackfillIn(Input):
    """A range of past time: one run per slot of the schedule in [from, to)."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [{"from": "2026-03-02T00:00:00+00:00", "to": "2026-03-02T06:00:00+00:00"}]
        },
    )

    start: datetime = Field(alias="from", description="inclusive, with an offset")
    end: datetime = Field(alias="to", description="exclusive, with an offset; not in the future")


class BackfillPreviewOut(BaseModel):
    slots: int = Field(description="slots of the schedule in the range")
    present: int = Field(description="of those, slots that already have their run")


class BackfillOut(BaseModel):
    execution_ids: list[uuid.UUID] = Field(description="the runs made, oldest slot first")
    created: int
    skipped_present: int = Field(description="slots skipped: they already had their run")


class Deleted(BaseModel):
    deleted: bool = True
    cancelled_runs: int


# --- executions ----------------------------------------------------------------------------


class ExecutionOut(BaseModel):
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
    duration_s: float | None
    steps_done: str

    @classmethod
    def of(cls, row: ExecutionRow) -> ExecutionOut:
        values = {name: getattr(row, name) for name in ExecutionRow.__dataclass_fields__}
        return cls(**values, duration_s=row.duration_s, steps_done=row.steps_done)


class StepRunOut(BaseModel):
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

    @classmethod
    def of(cls, row: StepRunRow) -> StepRunOut:
        return cls(**{name: getattr(row, name) for name in StepRunRow.__dataclass_fields__})


class ExecutionDetailOut(ExecutionOut):
    result: Any = None
    input: dict[str, Any] | None = Field(
        default=None, description="what the run was started with (sent with every step)"
    )
    steps: list[StepRunOut]

    @classmethod
    def of_detail(cls, detail: ExecutionDetail) -> ExecutionDetailOut:
        base = ExecutionOut.of(detail.execution).model_dump()
        steps = [StepRunOut.of(s) for s in detail.steps]
        return cls(**base, result=detail.result, input=detail.input, steps=steps)


class ExecutionPage(BaseModel):
    items: list[ExecutionOut]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )


# --- audit ----------------------------------------------------------------------------------


class AuditOut(BaseModel):
    at: datetime
    actor: str
    action: str
    target_type: str
    target_id: uuid.UUID
    details: dict[str, Any]

    @classmethod
    def of(cls, row: AuditRow) -> AuditOut:
        return cls(
            at=row.at,
            actor=row.actor,
            action=row.action,
            target_type=row.target_type,
            target_id=row.target_id,
            details=row.details,
        )


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=MAX_NAME,
        description=(
            "repeat a create or a run safely: the same key and body make one object or "
            "start one run, once"
        ),
    ),
]


def fingerprint(what: str, body: BaseModel | None) -> str:
    """What an Idempotency-Key is bound to: this kind of create with this exact body."""
    given = "null" if body is None else body.model_dump_json()
    return hashlib.sha256(f"{what}\n{given}".encode()).hexdigest()


def keyed(key: str | None, what: str, body: BaseModel | None) -> tuple[str, str] | None:
    """An Idempotency-Key with the fingerprint of its request, for `service`."""
    return None if key is None else (key, fingerprint(what, body))


def utc(value: datetime | None) -> datetime | None:
    """A query's time; one without an offset is read as UTC."""
    if value is None or value.utcoffset() is not None:
        return value
    return value.replace(tzinfo=UTC)


RunBody = Annotated[RunIn | None, Body(description="optional: the run's input")]
