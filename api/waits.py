"""/v1/callbacks/{token} (an async agent's answer, no API token), approvals, and the open waits.

An async step's call carries `callback_url` (`core.waits.callback_url`): its agent answers
`202` at once and later POSTs the result there, proven by the signed token in the URL (as
a webhook by its secret). The body is read up to STEPWISE_MAX_RESPONSE_BYTES (an agent's
answer may be no bigger) and no further (413). A proven callback counts against its step's
STEPWISE_API_RATE_PER_MINUTE calls a minute (429). An approval step is approved or
rejected by a member whose role is at least the step's, audited. Nothing is written on
any error.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api import ratelimit
from api.auth import Acting
from api.executions import execution_answer
from api.fields import fields_from
from api.problems import BodyTooLarge, RateLimited, documented
from api.responses import ExecutionDetailOut
from api.schemas import Input
from core.access import Actor
from core.limits import MAX_API_PAGE, MAX_STEP_KEY
from core.settings import get_settings
from core.waits import CALLBACK_PATH, MAX_DECISION_COMMENT, MAX_TOKEN_CHARS
from db.waits import OpenWait
from service import waits

# --- the callback ---------------------------------------------------------------------------

callbacks = APIRouter(tags=["waits"])
# A step run's callback is counted under a name of its own among the rate limit's callers.
_CALLERS = uuid.UUID("5b0f1c8e-3f5a-4e0a-9f57-7a61c4b2d0c1")

_CALLBACK_BODY = {
    "required": True,
    "description": "one of three answers (JSON, at most STEPWISE_MAX_RESPONSE_BYTES, 64 KiB "
    "by default): the step's output (it succeeds; its dependents receive the output), a "
    "failure (the step fails), or progress (any number of times; the wait stays open)",
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    {
                        "type": "object",
                        "title": "Output",
                        "properties": {"output": {"description": "any JSON"}},
                        "required": ["output"],
                        "additionalProperties": False,
                    },
                    {
                        "type": "object",
                        "title": "Failure",
                        "properties": {"error": {"type": "string", "maxLength": 2000}},
                        "required": ["error"],
                        "additionalProperties": False,
                    },
                    {
                        "type": "object",
                        "title": "Progress",
                        "properties": {
                            "progress": {"type": "number", "minimum": 0, "maximum": 100},
                            "note": {"type": "string", "maxLength": 500},
                        },
                        "minProperties": 1,
                        "additionalProperties": False,
                    },
                ]
            },
            "example": {"output": {"summary": "3 sources read", "pages": 12}},
        }
    },
}


class CallbackAccepted(BaseModel):
    """The answer was recorded (once: the same URL answers 409 from now on, but for
    progress, which may come any number of times before the answer)."""

    accepted: Literal[True] = True
    step_status: str = Field(
        description="`succeeded` (output), `failed` (error) or `waiting` (progress)"
    )


async def _read_capped(request: Request, limit: int) -> bytes:
    too_large = BodyTooLarge(f"send at most {limit // 1024} KiB (STEPWISE_MAX_RESPONSE_BYTES)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _admit(step_run_id: int) -> None:
    """Refuse a proven callback past its step's calls for this minute (progress included)."""
    wait = ratelimit.seconds_to_wait(uuid.uuid5(_CALLERS, str(step_run_id)))
    if wait:
        raise RateLimited(
            f"this step's callback had its {get_settings().api_rate_per_minute} calls for this "
            f"minute; try again in {wait} s",
            retry_after=wait,
        )


@callbacks.post(
    f"{CALLBACK_PATH}{{token}}",
    responses=documented(400, 401, 409, 410, 413, 422, 429, 503),
    openapi_extra={"requestBody": _CALLBACK_BODY, "security": []},
)
async def call_back(
    request: Request,
    token: Annotated[
        str, Path(max_length=MAX_TOKEN_CHARS, description="the token of the step's callback_url")
    ],
) -> CallbackAccepted:
    """An async step's agent answers: POST to the `callback_url` its call carried (no API
    token: the signed URL proves it, for that step's try only, until the step's timeout).
    `401` a URL not made by this Stepwise (or altered); `409` the step was answered already,
    or its run was cancelled or ended; `410` the step's timeout passed; `400`/`422` a body
    that is not one of the three answers; `503` (with `Retry-After`) a callback that came
    before the step's `202` was recorded: send it again. Nothing is written on any error;
    an accepted answer wakes the waiting run."""
    body = await _read_capped(request, get_settings().max_response_bytes)
    resolution = await run_in_threadpool(waits.callback, token, body, admit=_admit)
    return CallbackAccepted(step_status=str(resolution.status))


# --- approvals and the list ----------------------------------------------------------------

router = APIRouter(tags=["waits"], responses=documented(400, 401, 403, 404, 409, 410, 422))

StepKey = Annotated[str, Path(max_length=MAX_STEP_KEY, description="the approval step's key")]


class DecisionIn(Input):
    """A decision's optional comment (the body may be left out)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"comment": "checked the figures"}]}
    )

    comment: str | None = Field(
        default=None,
        max_length=MAX_DECISION_COMMENT,
        description="why (shown with the decision, audited)",
    )


_NO_COMMENT = DecisionIn()
DecisionBody = Annotated[DecisionIn | None, Body()]


def _decide(
    execution_id: uuid.UUID, step_key: str, body: DecisionIn | None, actor: Actor, approved: bool
) -> ExecutionDetailOut:
    comment = (body or _NO_COMMENT).comment
    waits.decide(execution_id, step_key, approved=approved, comment=comment, actor=actor)
    return execution_answer(execution_id, actor)


@router.post("/v1/executions/{execution_id}/steps/{step_key}/approve")
def approve_step(
    execution_id: uuid.UUID, step_key: StepKey, actor: Acting, body: DecisionBody = None
) -> ExecutionDetailOut:
    """Approve the approval step `step_key` of a waiting run: it succeeds with `{"approved":
    true, "by", "comment"}` and the run goes on. Your role must be at least the step's
    `approvers` (an editor by default: 403 otherwise); audited (`approve`). `409` once
    decided (by anyone) or when the run ended; `410` past the step's timeout."""
    return _decide(execution_id, step_key, body, actor, approved=True)


@router.post("/v1/executions/{execution_id}/steps/{step_key}/reject")
def reject_step(
    execution_id: uuid.UUID, step_key: StepKey, actor: Acting, body: DecisionBody = None
) -> ExecutionDetailOut:
    """Reject the approval step `step_key` of a waiting run: it fails, or is skipped when
    its `on_reject` is `skip`; its dependents follow the graph's rules. The same role
    rule, audit (`reject`) and answers as approving."""
    return _decide(execution_id, step_key, body, actor, approved=False)


@fields_from(OpenWait)
class WaitOut(BaseModel):
    """A step that waits now: since when, until when, on whom (`waiting_on`: "the agent",
    "approval by an editor", "until <instant> UTC"), an async step's last progress, an
    approval's role and rendered message."""


class WaitPage(BaseModel):
    items: list[WaitOut]


@router.get("/v1/waits")
def list_waits(
    actor: Acting,
    limit: Annotated[int, Query(ge=1, le=MAX_API_PAGE)] = 100,
) -> WaitPage:
    """The open waits of your workspace's runs, soonest deadline first."""
    rows = waits.open_waits(actor=actor, limit=limit)
    return WaitPage(items=[WaitOut.model_validate(vars(row)) for row in rows])
