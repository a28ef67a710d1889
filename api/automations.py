"""/v1/automations: create, read, list, replace, archive, and start a run."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from api.auth import Acting
from api.problems import documented
from api.responses import (
    Archived,
    AutomationCreated,
    AutomationOut,
    RunStarted,
    WebhookDisabled,
    WebhookOut,
    WebhookSecretOut,
)
from api.schemas import AutomationIn, IdempotencyKeyHeader, RunBody, keyed
from core.errors import NotFound, ValidationFailed
from core.limits import DEFAULT_AUTOMATIONS_PAGE as DEFAULT_PAGE
from core.limits import MAX_API_PAGE as MAX_PAGE
from db import automations as stored
from db import queries
from db.queries import AutomationKey
from db.webhooks import WebhookInfo, webhook_of
from service import automations, executions, webhooks
from service.unit import read

router = APIRouter(
    prefix="/v1/automations",
    tags=["automations"],
    responses=documented(400, 401, 403, 404, 409, 422),
)


@router.post("", status_code=status.HTTP_201_CREATED)
def create_automation(
    body: AutomationIn, actor: Acting, idempotency_key: IdempotencyKeyHeader = None
) -> AutomationCreated:
    """Create an automation; its signing secret is in this answer only. A repeat with the
    same `Idempotency-Key` answers with the automation made, `signing_secret` null: if the
    first answer was lost, make a new signing secret on the Automations page (audited)."""
    key = keyed(idempotency_key, "automation", body)
    made = automations.create(body.parsed(actor.name), actor=actor, idempotency_key=key)
    out = AutomationOut.model_validate(made.automation).model_dump()
    return AutomationCreated(**out, signing_secret=made.signing_secret)


# The body stays a list, as clients written before pages expect; the next page's cursor
# comes in a header (and as an RFC 8288 `Link`), absent on the last page.
NEXT_CURSOR = "Stepwise-Next-Cursor"
_NEXT = {
    NEXT_CURSOR: {
        "description": "the `cursor` of the next page (absent on the last)",
        "schema": {"type": "string"},
    },
    "Link": {
        "description": '`<...?cursor=...>; rel="next"` (absent on the last page)',
        "schema": {"type": "string"},
    },
}


@router.get("", responses={200: {"headers": _NEXT}})
def list_automations(
    actor: Acting,
    request: Request,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> list[AutomationOut]:
    """The live (not archived) automations of the token's workspace, by name, `limit` at a
    time; follow the `Stepwise-Next-Cursor` header (or `Link`) for the next page."""
    after = None if cursor is None else decode_cursor(cursor)
    rows = read(queries.list_automations, actor=actor, limit=limit + 1, after=after)
    page = rows[:limit]
    if len(rows) > limit:
        token = encode_cursor(AutomationKey.of(page[-1]))
        response.headers[NEXT_CURSOR] = token
        following = request.url.include_query_params(cursor=token, limit=limit)
        response.headers["Link"] = f'<{following}>; rel="next"'
    return [AutomationOut.model_validate(row) for row in page]


def encode_cursor(key: AutomationKey) -> str:
    raw = json.dumps([key.name, key.created_at.isoformat(), str(key.id)])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> AutomationKey:
    """The key a cursor of ours names; ValidationFailed ("cursor") for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        name, created_at, automation_id = json.loads(raw)
        key = AutomationKey(str(name), datetime.fromisoformat(created_at), uuid.UUID(automation_id))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ValidationFailed.single("cursor", "is not a cursor this API gave out") from None
    if key.created_at.utcoffset() is None:
        raise ValidationFailed.single("cursor", "is not a cursor this API gave out")
    return key


@router.get("/{automation_id}")
def get_automation(automation_id: uuid.UUID, actor: Acting) -> AutomationOut:
    return AutomationOut.model_validate(read(stored.get_automation, automation_id, actor=actor))


@router.put("/{automation_id}")
def update_automation(automation_id: uuid.UUID, body: AutomationIn, actor: Acting) -> AutomationOut:
    """Replace every field of the automation (send the whole automation)."""
    return AutomationOut.model_validate(
        automations.update(automation_id, body.parsed(actor.name), actor=actor)
    )


@router.delete("/{automation_id}")
def archive_automation(automation_id: uuid.UUID, actor: Acting) -> Archived:
    """Archive the automation: its schedules stop and its open runs are cancelled."""
    return Archived(cancelled_runs=automations.delete(automation_id, actor=actor))


@router.post("/{automation_id}/run", status_code=status.HTTP_202_ACCEPTED)
def run_automation(
    automation_id: uuid.UUID,
    actor: Acting,
    body: RunBody = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> RunStarted:
    """Start a manual run now (a test run), with an optional `input`; follow it at
    /v1/executions/{id}. With an `Idempotency-Key`, a repeat answers with the first run."""
    run_input = None if body is None else body.parsed()
    key = keyed(idempotency_key, f"run {automation_id}", body)
    started = executions.run_now(
        automation_id, actor=actor, run_input=run_input, idempotency_key=key
    )
    return RunStarted(execution_id=started)


# --- the webhook ---------------------------------------------------------------------------
# Its /hook paths are the first ones, kept for the scripts that call them.


def _webhook_url(request: Request, info: WebhookInfo) -> str:
    # The first address (/v1/hooks/{hook_id}): the one every sender already holds.
    return str(request.url_for("call_hook", hook_id=info.id))


@router.get(
    "/{automation_id}/hook",
    deprecated=True,
    operation_id="get_hook_v1_automations__automation_id__hook_get",
    summary="Get Hook",
)
@router.get("/{automation_id}/webhook")
def get_webhook(automation_id: uuid.UUID, actor: Acting, request: Request) -> WebhookOut:
    """The automation's webhook (404 when it has none); never its secret."""
    info = read(webhook_of, automation_id, actor=actor)
    if info is None:
        raise NotFound("this automation has no webhook")
    return WebhookOut.of(info, _webhook_url(request, info))


@router.post(
    "/{automation_id}/hook",
    status_code=status.HTTP_201_CREATED,
    deprecated=True,
    operation_id="enable_hook_v1_automations__automation_id__hook_post",
    summary="Enable Hook",
)
@router.post("/{automation_id}/webhook", status_code=status.HTTP_201_CREATED)
def enable_webhook(automation_id: uuid.UUID, actor: Acting, request: Request) -> WebhookSecretOut:
    """Enable the automation's webhook: its URL, and its secret, in this answer only."""
    made = webhooks.enable_webhook(automation_id, actor=actor)
    out = WebhookOut.of(made.info, _webhook_url(request, made.info))
    return WebhookSecretOut(**out.model_dump(), secret=made.secret)


@router.post(
    "/{automation_id}/hook/rotate",
    deprecated=True,
    operation_id="rotate_hook_v1_automations__automation_id__hook_rotate_post",
    summary="Rotate Hook",
)
@router.post("/{automation_id}/webhook/rotate")
def rotate_webhook(automation_id: uuid.UUID, actor: Acting, request: Request) -> WebhookSecretOut:
    """A new secret for the webhook (same URL), in this answer only; the old one stops."""
    made = webhooks.rotate_webhook(automation_id, actor=actor)
    out = WebhookOut.of(made.info, _webhook_url(request, made.info))
    return WebhookSecretOut(**out.model_dump(), secret=made.secret)


@router.delete(
    "/{automation_id}/hook",
    deprecated=True,
    operation_id="disable_hook_v1_automations__automation_id__hook_delete",
    summary="Disable Hook",
)
@router.delete("/{automation_id}/webhook")
def disable_webhook(automation_id: uuid.UUID, actor: Acting) -> WebhookDisabled:
    """Disable the webhook: its URL answers 404 from now on."""
    webhooks.disable_webhook(automation_id, actor=actor)
    return WebhookDisabled()
