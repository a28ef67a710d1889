"""An automation's inbound webhook: enable, rotate and disable it, and start a run for a call.

Editors manage the webhook (audited, never its secret). A call proves itself with the
webhook's secret or a signature of its body (`db.webhooks.authenticate`) and then acts as
the webhook, which may only read and start runs (`db.workspaces.authorize`); its run is
sent to the workers once its transaction has committed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from core.access import Actor
from core.errors import NotAuthenticated, ValidationFailed
from core.limits import MAX_DELIVERY_ID
from core.run_input import parse_run_input
from core.secrets import SIGNATURE_HEADER, signed_message
from core.vocabulary import AuditAction, AuditTarget, Permission, Trigger
from db import webhooks
from db.webhooks import NewWebhookSecret
from service import executions
from service.unit import read, unit_of_work

SECRET_HEADER = "Stepwise-Hook-Secret"
DELIVERY_HEADER = "Stepwise-Delivery"


def enable_webhook(automation_id: uuid.UUID, *, actor: Actor) -> NewWebhookSecret:
    """Give the automation a webhook URL and a secret, shown this once (editors; audited)."""
    with unit_of_work(actor, Permission.EDIT) as unit:
        made = webhooks.enable_webhook(unit.session, automation_id, actor=actor)
        unit.audit(AuditAction.ENABLE_WEBHOOK, AuditTarget.AUTOMATION, automation_id)
    return made


def rotate_webhook(automation_id: uuid.UUID, *, actor: Actor) -> NewWebhookSecret:
    """A new secret for the webhook, same URL (editors; audited): the old one stops at once."""
    with unit_of_work(actor, Permission.EDIT) as unit:
        made = webhooks.rotate_webhook(unit.session, automation_id, actor=actor)
        unit.audit(AuditAction.ROTATE_WEBHOOK, AuditTarget.AUTOMATION, automation_id)
    return made


def disable_webhook(automation_id: uuid.UUID, *, actor: Actor) -> None:
    """Delete the webhook (editors; audited): its URL answers 404 from now on."""
    with unit_of_work(actor, Permission.EDIT) as unit:
        webhooks.disable_webhook(unit.session, automation_id, actor=actor)
        unit.audit(AuditAction.DISABLE_WEBHOOK, AuditTarget.AUTOMATION, automation_id)


def check_delivery_id(value: str | None) -> str | None:
    """The Stepwise-Delivery header, checked: None (no deduplication) or printable text."""
    if value is None:
        return None
    if not value or len(value) > MAX_DELIVERY_ID or not value.isprintable():
        raise ValidationFailed.single(
            DELIVERY_HEADER, f"give 1 to {MAX_DELIVERY_ID} printable characters"
        )
    return value


def run_by_webhook(
    webhook_id: uuid.UUID,
    body: bytes,
    *,
    secret: str | None,
    signature: str | None,
    delivery_id: str | None,
    admit: Callable[[uuid.UUID], None] | None = None,
) -> uuid.UUID:
    """Start a run for a call to an automation's webhook, its JSON body as the run's input;
    returns the execution id (a repeated delivery id: the first call's, nothing new).

    NotFound for a webhook that does not exist (or was disabled), NotAuthenticated without
    its secret or a valid signature, ValidationFailed for a body that is not a JSON object:
    nothing is written in any of these cases. `admit(webhook_id)` is called once the call is
    proven, before anything is written, and may raise to refuse it (the API's rate limit).
    """
    actor = read(webhooks.authenticate, webhook_id, body, secret=secret, signature=signature)
    if actor is None:
        raise NotAuthenticated(
            f"send the webhook's secret as {SECRET_HEADER}, or sign the body "
            f"({SIGNATURE_HEADER}: t=<unix seconds>,v1=<HMAC-SHA256 of t.body>)",
            webhook=True,
        )
    if admit is not None:
        admit(webhook_id)
    delivery = check_delivery_id(delivery_id)
    run_input = parse_run_input(body, field="body")
    if run_input is None:
        raise ValidationFailed.single("body", 'send a JSON object, like {"key": "value"}')
    # A signed request is remembered like a delivery id (the id is not signed: a replay
    # with a new one would start another run); its key is not printable, so no sender's
    # Stepwise-Delivery can take it.
    signed = signed_message(signature, body) if signature and not secret else None
    keys = [key for key in (f"\tsigned {signed}" if signed else None, delivery) if key]
    with unit_of_work(actor, Permission.RUN) as unit:
        automation_id = webhooks.webhook_automation(unit.session, actor=actor)
        claimed: list[str] = []
        for key in keys:
            seen = webhooks.claim_delivery(unit.session, key, actor=actor)
            if seen is not None:  # a repeat: its run was sent by the call that started it
                webhooks.record_webhook_run(unit.session, claimed, seen, actor=actor)
                return seen
            claimed.append(key)
        execution_id = executions.start_in(
            unit, automation_id, run_input, trigger=Trigger.WEBHOOK, delivery_id=delivery
        )
        webhooks.record_webhook_run(unit.session, claimed, execution_id, actor=actor)
    return execution_id
