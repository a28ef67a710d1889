"""/v1/webhooks/{id} (and /v1/hooks/{id}): an automation's webhook, called without a token.

The call proves itself with the webhook's secret or a signature of its body (see
db/webhooks.py); its JSON object body becomes the run's input (`service.webhooks`). The
body is read up to MAX_INPUT_BYTES and no further: a bigger one is refused (413) before
it is read whole.
A proven call counts against the webhook's calls per minute (api/ratelimit.py, 429).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, status
from starlette.concurrency import run_in_threadpool

from api import ratelimit
from api.problems import BodyRefused, BodyTooLarge, RateLimited, documented
from api.responses import RunStarted
from core.errors import ValidationFailed
from core.limits import MAX_DELIVERY_ID, MAX_INPUT_BYTES
from core.secrets import SIGNATURE_HEADER
from core.settings import get_settings
from service import webhooks
from service.webhooks import DELIVERY_HEADER, SECRET_HEADER

router = APIRouter(tags=["webhooks"])

_BODY = {
    "required": True,
    "description": "a JSON object (at most 64 KiB): the run's input, given to every step",
    "content": {
        "application/json": {
            "schema": {"type": "object"},
            "example": {"event": "order.paid", "order": 42},
        }
    },
}


async def _read_capped(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_INPUT_BYTES:
        raise BodyTooLarge(f"send at most {MAX_INPUT_BYTES // 1024} KiB")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_INPUT_BYTES:
            raise BodyTooLarge(f"send at most {MAX_INPUT_BYTES // 1024} KiB")
    return bytes(body)


def _admit(webhook_id: uuid.UUID) -> None:
    """Refuse a proven call past the webhook's calls for this minute."""
    wait = ratelimit.seconds_to_wait(webhook_id)
    if wait:
        raise RateLimited(
            f"this webhook had its {get_settings().api_rate_per_minute} calls for this minute; "
            f"try again in {wait} s",
            retry_after=wait,
        )


SecretHeader = Annotated[
    str | None, Header(alias=SECRET_HEADER, description="the webhook's secret (or sign the body)")
]
SignatureHeader = Annotated[
    str | None,
    Header(
        alias=SIGNATURE_HEADER,
        description="t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<body>' under the secret>",
    ),
]
DeliveryHeader = Annotated[
    str | None,
    Header(
        alias=DELIVERY_HEADER,
        max_length=MAX_DELIVERY_ID,
        description="the sender's id of this delivery: a repeat starts no second run",
    ),
]
_ROUTE: dict[str, Any] = {
    "status_code": status.HTTP_202_ACCEPTED,
    "responses": documented(400, 401, 404, 409, 413, 422, 429),
    "openapi_extra": {"requestBody": _BODY, "security": []},
}


@router.post("/v1/webhooks/{webhook_id}", name="call_webhook", **_ROUTE)
async def call_webhook(
    webhook_id: uuid.UUID,
    request: Request,
    secret: SecretHeader = None,
    signature: SignatureHeader = None,
    delivery_id: DeliveryHeader = None,
) -> RunStarted:
    """Start a run of the webhook's automation with the JSON body as its input (no API
    token: the secret or the signature proves the call). The same `Stepwise-Delivery`
    again answers with the first call's run."""
    body = await _read_capped(request)
    try:
        execution_id = await run_in_threadpool(
            webhooks.run_by_webhook,
            webhook_id,
            body,
            secret=secret,
            signature=signature,
            delivery_id=delivery_id,
            admit=_admit,
        )
    except ValidationFailed as exc:
        raise BodyRefused(exc.errors) from None
    return RunStarted(execution_id=execution_id)


# The webhook's first address, which every sender holds and answers still give: not
# deprecated, the same call under its first names.
@router.post(
    "/v1/hooks/{hook_id}",
    name="call_hook",
    operation_id="call_hook_v1_hooks__hook_id__post",
    summary="Call Hook",
    **_ROUTE,
)
async def call_hook(
    hook_id: uuid.UUID,
    request: Request,
    secret: SecretHeader = None,
    signature: SignatureHeader = None,
    delivery_id: DeliveryHeader = None,
) -> RunStarted:
    """Start a run of the webhook's automation with the JSON body as its input (no API
    token: the secret or the signature proves the call). The same `Stepwise-Delivery`
    again answers with the first call's run."""
    return await call_webhook(hook_id, request, secret, signature, delivery_id)
