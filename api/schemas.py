"""What the API reads: request bodies and headers, as pydantic models (and so as OpenAPI).

Input models check only what JSON cannot say for itself (types); every rule of the
domain, text that PostgreSQL cannot store included, is checked once, below, by the
same `core` functions the dashboard's forms and `stepwise apply` use, so a refused
field carries the same message on each. Their fields are the core's input types'
(`api.fields`). What the API answers: `api.responses`.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Body, Header
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticSerializationError

from api.fields import enum_words, fields_from
from core.automation import AutomationInput, steps_of
from core.limits import (
    MAX_INPUT_BYTES,
    MAX_NAME,
    MAX_OWNER,
    MAX_PAUSE_NOTE,
    MAX_STEPS,
    MIN_INTERVAL_S,
)
from core.run_input import RunInput, parse_run_input
from core.schedule import POLICY_FIELDS, ScheduleDefinition, ScheduleInput, parse_schedule
from core.settings import get_settings
from core.timing import TIMING_FIELDS, ScheduleSpec
from core.vocabulary import MisfirePolicy, OverlapPolicy, ScheduleKind

# The database's integers are 32-bit: a bigger number is refused here, not by a crash.
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]


class Input(BaseModel):
    """A request body: unknown fields are refused; its values are checked by the core."""

    model_config = ConfigDict(extra="forbid")


# --- automations ----------------------------------------------------------------------


class StepIn(Input):
    """A step. Without a `key`, a step of a line (name and message, the message sent as
    written). With keys on every step, the automation is a graph: the other fields apply,
    and messages are templates (README: Workflow graphs)."""

    name: str = ""
    message: str = Field(
        default="",
        description="what the agent is asked (an approval: what the person deciding reads; "
        "a sleep has none); in a graph, a template over `input` and `steps.<need>.output` "
        "(and `item`, `index` in a for_each)",
    )
    key: str | None = Field(
        default=None,
        description="the step's key in a graph (a slug, unique): every step has one, or none",
        examples=["research"],
    )
    needs: list[str] | None = Field(
        default=None, description="the keys this step waits for (none: a root)", examples=[["a"]]
    )
    optional_needs: list[str] | None = Field(
        default=None,
        description="waited for too, but their skip does not skip this step (output: null)",
    )
    input: dict[str, Any] | None = Field(
        default=None,
        description="the call's input, an object whose texts are templates (none: the run's)",
        examples=[{"topic": "{{ input.topic }}"}],
    )
    when: str | None = Field(
        default=None,
        description="a condition (Jinja expression); false skips the step",
        examples=["steps.classify.output.kind == 'bug'"],
    )
    for_each: str | None = Field(
        default=None,
        description="an expression giving a list: one call per item (at most 1,000)",
        examples=["steps.research.output.sources"],
    )
    kind: str | None = Field(
        default=None,
        description="`call` (the default); `async` (the agent may answer 202 and POST the "
        "result to the body's `callback_url`); `approval` (a person approves or rejects); "
        "`sleep` (waits `sleep_s` or until `sleep_until`)",
    )
    agent_url: str | None = Field(
        default=None, description="this step's agent (none: the automation's)"
    )
    timeout_s: Int32 | None = Field(
        default=None,
        description="none: the automation's (an approval's: a day); an async or approval "
        "step's covers its whole wait, up to 7 days",
    )
    max_retries: Int32 | None = Field(default=None, description="none: the automation's")
    request_headers: dict[str, str] | None = Field(
        default=None, description="this step's headers, in place of the automation's"
    )
    sleep_s: Int32 | None = Field(default=None, description="a sleep's length, in seconds")
    sleep_until: str | None = Field(
        default=None,
        description="a sleep's end: a template giving an ISO 8601 instant with its offset",
        examples=["{{ input.send_at }}"],
    )
    approvers: str | None = Field(
        default=None, description="an approval's deciders: `editor` (the default) or `admin`"
    )
    on_reject: str | None = Field(
        default=None, description="a rejected approval: `fail` (the default) or `skip`"
    )
    on_timeout: str | None = Field(
        default=None,
        description="an approval nobody decided in time: `reject` (the default) or `approve`",
    )


@fields_from(
    AutomationInput,
    omit={"owner_id"},  # the token's
    ints=Int32,
    more={
        "agent_url": Field(description="http(s) URL the workers POST each step to"),
        "urgent": Field(description="runs go to the urgent queue, ahead of any backlog"),
    },
)
class AutomationIn(Input):
    """An automation as created or replaced (PUT sends every field)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Research brief",
                    "agent_url": "https://agent.example.com/run",
                    "steps": [
                        {"key": "plan", "message": "List sources on {{ input.topic }}"},
                        {
                            "key": "read",
                            "needs": ["plan"],
                            "for_each": "steps.plan.output.sources",
                            "message": "Summarise {{ item }}",
                        },
                        {
                            "key": "check",
                            "needs": ["plan"],
                            "when": "input.strict",
                            "message": "Check {{ steps.plan.output }}",
                        },
                        {
                            "key": "brief",
                            "needs": ["read"],
                            "optional_needs": ["check"],
                            "message": "Write the brief from {{ steps.read.output }}",
                        },
                    ],
                },
            ]
        }
    )

    steps: list[StepIn] = Field(
        description=f"1 to {MAX_STEPS} steps: without keys, run in order; with keys, a graph"
    )
    request_headers: dict[str, str] = Field(
        default_factory=dict,
        description="sent with every call; credentials as {{ secret.NAME }} (workspace secrets)",
    )

    def parsed(self, owner: str) -> AutomationInput:
        return AutomationInput(
            **self.model_dump(exclude={"steps", "request_headers"}),
            steps=steps_of([s.model_dump(exclude_none=True) for s in self.steps]),
            request_headers=tuple(self.request_headers.items()),
            owner_id=owner[:MAX_OWNER],
        )


INPUT_DESCRIPTION = (
    f"a JSON object (at most {MAX_INPUT_BYTES // 1024} KiB) the agent receives with every "
    "step as `input`"
)


class RunIn(Input):
    """What a manual run starts with (the body is optional)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"input": {"region": "eu"}}]})

    input: dict[str, Any] | None = Field(default=None, description=INPUT_DESCRIPTION)

    def parsed(self) -> RunInput | None:
        return parse_run_input(self.input)


# --- schedules -------------------------------------------------------------------------


@fields_from(
    ScheduleSpec,
    ScheduleInput,
    omit={"anchor", "spec"},  # a new schedule's anchor is its creation
    ints=Int32,
    more={
        "kind": Field(json_schema_extra=enum_words(ScheduleKind)),
        "cron_expr": Field(description="5 fields, or @hourly-style macros"),
        "interval_s": Field(description=f"at least {MIN_INTERVAL_S}"),
        "run_at": Field(description="once: when, with an offset"),
        "misfire_policy": Field(json_schema_extra=enum_words(MisfirePolicy)),
        "overlap_policy": Field(json_schema_extra=enum_words(OverlapPolicy)),
    },
)
class TimingIn(Input):
    """A schedule's timing and policies: cron, interval or once, in an IANA timezone."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"kind": "cron", "cron_expr": "0 9 * * 1-5", "timezone": "Europe/Berlin"}]
        }
    )

    input: dict[str, Any] | None = Field(
        default=None, description=f"every run's input: {INPUT_DESCRIPTION}"
    )

    def parsed(self) -> ScheduleDefinition:
        """Every rule checked, as the dashboard's schedule form checks it."""
        spec = ScheduleSpec(**self.model_dump(include=set(TIMING_FIELDS)))
        data = ScheduleInput(spec=spec, **self.model_dump(include=set(POLICY_FIELDS)))
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


# --- headers and queries ------------------------------------------------------------


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
    try:
        given = "null" if body is None else body.model_dump_json()
    except PydanticSerializationError:
        # Text JSON cannot encode (a lone surrogate): the core refuses the body before
        # anything is kept, the key's claim included; any fingerprint does meanwhile.
        given = repr(body)
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
