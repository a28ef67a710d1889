"""What the API answers, as pydantic models (and so as the OpenAPI schema).

A model that shows a `db` row takes the row type's fields (`api.fields`) and is built
with `Model.model_validate(row)` (`from_attributes`: a row's properties are read as
fields too); it declares only what the API adds to the row.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from api.fields import enum_words, fields_from
from core.automation import redact_url
from core.vocabulary import CompletedReason, ScheduleState
from db.audit import AuditRow
from db.queries import AutomationRow, ExecutionDetail, ExecutionRow, ScheduleRow, StepRunRow
from db.webhooks import WebhookInfo


def _redacted(url: str | None) -> str | None:
    return None if url is None else redact_url(url)


class Out(BaseModel):
    """An answer built from a row (or an ORM object): its attributes are the fields."""

    model_config = ConfigDict(from_attributes=True)


# --- automations ----------------------------------------------------------------------


def _absent(value: Any) -> bool:
    return value is None


def _graph_field(description: str) -> Any:
    """A field of a graph's step: left out of the answer when the step does not set it."""
    return Field(default=None, description=description, exclude_if=_absent)


class StepOut(Out):
    """A step as saved: a line's `{name, message}`; a graph's in its plain form (the fields it
    sets), as sent."""

    name: str = ""
    message: str
    key: str | None = _graph_field("the step's key (a graph's steps only)")
    needs: list[str] | None = _graph_field("the keys it waits for")
    optional_needs: list[str] | None = _graph_field("waited for; their skip does not skip it")
    input: dict[str, Any] | None = _graph_field("the call's input template")
    when: str | None = _graph_field("its condition")
    for_each: str | None = _graph_field("the list it calls once per item of")
    kind: str | None = _graph_field("`call` (left out), `async`, `approval` or `sleep`")
    agent_url: Annotated[str | None, AfterValidator(_redacted)] = _graph_field(
        "its own agent; secret-looking query values and passwords shown REDACTED"
    )
    timeout_s: int | None = _graph_field("its own timeout")
    max_retries: int | None = _graph_field("its own retries")
    request_headers: dict[str, str] | None = _graph_field("its own headers")
    sleep_s: int | None = _graph_field("a sleep's length, in seconds")
    sleep_until: str | None = _graph_field("a sleep's end (a template)")
    approvers: str | None = _graph_field("an approval's weakest deciding role")
    on_reject: str | None = _graph_field("what a rejection does: `fail` or `skip`")
    on_timeout: str | None = _graph_field("an undecided approval's end: `reject` or `approve`")


# Built from an `AutomationRow` or the `Automation` model alike.
@fields_from(AutomationRow, omit={"schedules"})
class AutomationOut(Out):
    agent_url: Annotated[str, AfterValidator(redact_url)] = Field(
        description="secret-looking query values and passwords shown REDACTED"
    )
    steps: list[StepOut]


class AutomationCreated(AutomationOut):
    signing_secret: str | None = Field(
        description="signs every call to the agent (Stepwise-Signature); shown this once"
    )


class Archived(BaseModel):
    archived: bool = True
    cancelled_runs: int


class RunStarted(BaseModel):
    execution_id: uuid.UUID


@fields_from(WebhookInfo)
class WebhookOut(Out):
    """An automation's inbound webhook: POST a JSON object to `url` to start a run."""

    url: str

    @classmethod
    def of(cls, info: WebhookInfo, url: str) -> WebhookOut:
        return cls.model_validate({**vars(info), "url": url})


class WebhookSecretOut(WebhookOut):
    secret: str = Field(
        description="send as Stepwise-Hook-Secret, or sign bodies with it; shown this once"
    )


class WebhookDisabled(BaseModel):
    disabled: bool = True


# --- schedules -------------------------------------------------------------------------


class Preview(BaseModel):
    description: str
    timezone: str
    next_runs: list[datetime] = Field(description="UTC instants; empty if none is left")


@fields_from(
    ScheduleRow,
    more={
        "paused_by": Field(description="who paused it (null unless paused by someone)"),
        "pause_note": Field(description="why, as they wrote it"),
        "parked_error": Field(
            description="why Stepwise could not plan it (completed_reason "
            f"{CompletedReason.PARKED.value!r}); null otherwise"
        ),
    },
)
class ScheduleOut(Out):
    state: str = Field(json_schema_extra=enum_words(ScheduleState))
    description: str


class BackfillPreviewOut(BaseModel):
    slots: int = Field(description="slots of the schedule in the range")
    present: int = Field(description="of those, slots that already have an execution")


class BackfillOut(BaseModel):
    execution_ids: list[uuid.UUID] = Field(description="the executions made, oldest slot first")
    created: int
    skipped_present: int = Field(description="slots skipped: they already had an execution")


class Deleted(BaseModel):
    deleted: bool = True
    cancelled_runs: int


# --- executions ----------------------------------------------------------------------------


@fields_from(ExecutionRow)
class ExecutionOut(Out):
    duration_s: float | None
    steps_done: str


@fields_from(StepRunRow)
class StepRunOut(Out):
    pass


class ExecutionDetailOut(ExecutionOut):
    result: Any = None
    input: dict[str, Any] | None = Field(
        default=None, description="what the run was started with (sent with every step)"
    )
    steps: list[StepRunOut]

    @classmethod
    def of_detail(cls, detail: ExecutionDetail) -> ExecutionDetailOut:
        """The execution's fields, and beside them its result, input and steps."""
        execution = ExecutionOut.model_validate(detail.execution).model_dump()
        given = {"result": detail.result, "input": detail.input, "steps": detail.steps}
        return cls.model_validate(execution | given)


class ExecutionPage(BaseModel):
    items: list[ExecutionOut]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )


# --- audit ----------------------------------------------------------------------------------


@fields_from(AuditRow)
class AuditOut(Out):
    pass
