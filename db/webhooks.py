"""Webhooks: a POST to /v1/hooks/<webhook id> (or /v1/webhooks/…) starts a run of one automation.

An automation's webhook is enabled, rotated and disabled here (by its editors: the
role check and the audit row are the caller's, `service.webhooks`); its secret is
sealed at rest (core.secrets) and returned only by `enable_webhook` and `rotate_webhook`, to
be shown once. A call proves itself with that secret (`Stepwise-Hook-Secret`) or with
an HMAC-SHA256 signature of its exact body (`Stepwise-Signature: t=..,v1=..`, as agent
calls are signed, within SIGNATURE_TOLERANCE_S of the database's clock).
`authenticate` turns a call into an Actor that may only read and start runs
(`db.workspaces.authorize`); `start_webhook_run` starts one, once per delivery id.
Functions take a session, scope every statement by the actor's workspace and never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.access import Actor
from core.errors import InvalidState, NotFound
from core.limits import SIGNATURE_TOLERANCE_S
from core.secrets import new_signing_secret, secret_matches, verify_signature
from core.settings import get_settings
from core.vocabulary import Role
from db.automations import get_automation
from db.models import Automation, Webhook, WebhookDelivery
from db.session import db_now


@dataclass(frozen=True)
class WebhookInfo:
    """What an automation's readers may know of its webhook: never the secret."""

    id: uuid.UUID
    automation_id: uuid.UUID
    created_by: str
    created_at: datetime
    rotated_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True)
class NewWebhookSecret:
    """A webhook with its secret in clear: shown to its editor this once."""

    info: WebhookInfo
    secret: str


def _info(row: Webhook) -> WebhookInfo:
    return WebhookInfo(
        id=row.id,
        automation_id=row.automation_id,
        created_by=row.created_by,
        created_at=row.created_at,
        rotated_at=row.rotated_at,
        last_used_at=row.last_used_at,
    )


def _row(session: Session, automation_id: uuid.UUID, actor: Actor) -> Webhook | None:
    return session.scalar(
        select(Webhook).where(
            Webhook.automation_id == automation_id,
            Webhook.workspace_id == actor.workspace_id,
        )
    )


def webhook_of(session: Session, automation_id: uuid.UUID, *, actor: Actor) -> WebhookInfo | None:
    """The automation's webhook, None if it has none (NotFound for another workspace's)."""
    get_automation(session, automation_id, actor=actor)
    row = _row(session, automation_id, actor)
    return None if row is None else _info(row)


def enable_webhook(session: Session, automation_id: uuid.UUID, *, actor: Actor) -> NewWebhookSecret:
    """Give the automation a webhook URL and a secret (InvalidState if it has one)."""
    get_automation(session, automation_id, actor=actor)
    if _row(session, automation_id, actor) is not None:
        raise InvalidState("this automation's webhook is already enabled (rotate its secret)")
    secret = new_signing_secret()
    row = Webhook(
        automation_id=automation_id,
        workspace_id=actor.workspace_id,
        secret=get_settings().secret_box().seal(secret),
        created_by=actor.name,
    )
    session.add(row)
    session.flush()
    session.refresh(row)
    return NewWebhookSecret(_info(row), secret)


def rotate_webhook(session: Session, automation_id: uuid.UUID, *, actor: Actor) -> NewWebhookSecret:
    """A new secret for the webhook (same URL); the old secret stops at once."""
    get_automation(session, automation_id, actor=actor)
    row = _row(session, automation_id, actor)
    if row is None:
        raise NotFound("this automation has no webhook: enable it first")
    secret = new_signing_secret()
    row.secret = get_settings().secret_box().seal(secret)
    row.rotated_at = func.now()
    session.flush()
    session.refresh(row)
    return NewWebhookSecret(_info(row), secret)


def disable_webhook(session: Session, automation_id: uuid.UUID, *, actor: Actor) -> None:
    """Delete the webhook: its URL answers 404 from now on (enabling again makes a new one)."""
    get_automation(session, automation_id, actor=actor)
    gone = session.scalar(
        delete(Webhook)
        .where(
            Webhook.automation_id == automation_id,
            Webhook.workspace_id == actor.workspace_id,
        )
        .returning(Webhook.id)
    )
    if gone is None:
        raise NotFound("this automation has no webhook")


def authenticate(
    session: Session,
    webhook_id: uuid.UUID,
    body: bytes,
    *,
    secret: str | None,
    signature: str | None,
) -> Actor | None:
    """The actor a call to `webhook_id` stands for, or None if it proves nothing.

    NotFound if there is no such webhook (never made, disabled) or its automation
    was deleted: the same answer whether the secret was right or not.
    """
    row = session.execute(
        select(Webhook.workspace_id, Webhook.secret)
        .join(Automation, Automation.id == Webhook.automation_id)
        .where(Webhook.id == webhook_id, Automation.archived_at.is_(None))
    ).first()
    if row is None:
        raise NotFound(f"no webhook {webhook_id} (it may have been disabled)")
    if not secret and not signature:
        return None
    expected = get_settings().secret_box().open(row.secret)
    if secret:
        proven = secret_matches(secret, expected)
    else:
        now = int(db_now(session).timestamp())
        proven = verify_signature(
            expected, signature or "", body, now=now, tolerance_s=SIGNATURE_TOLERANCE_S
        )
    if not proven:
        return None
    return Actor(
        name=f"webhook {webhook_id}",
        workspace_id=row.workspace_id,
        role=Role.EDITOR,
        webhook_id=webhook_id,
    )


def webhook_automation(session: Session, *, actor: Actor) -> uuid.UUID:
    """The automation the calling webhook starts (NotFound if it was disabled meanwhile)."""
    automation_id = session.scalar(
        select(Webhook.automation_id).where(Webhook.id == actor.webhook_id)
    )
    if automation_id is None:  # the role check found it: only a concurrent disable gets here
        raise NotFound("the webhook was disabled")
    return uuid.UUID(str(automation_id))


def record_webhook_run(
    session: Session, delivery_ids: Sequence[str], execution_id: uuid.UUID, *, actor: Actor
) -> None:
    """Tie the call's delivery ids (claimed by `claim_delivery`) to the run it started (or
    answered with), and mark the webhook used."""
    if delivery_ids:
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.webhook_id == actor.webhook_id,
                WebhookDelivery.delivery_id.in_(delivery_ids),
            )
            .values(execution_id=execution_id)
        )
    session.execute(
        update(Webhook).where(Webhook.id == actor.webhook_id).values(last_used_at=func.now())
    )


def claim_delivery(session: Session, delivery_id: str, *, actor: Actor) -> uuid.UUID | None:
    """None if `delivery_id` is new (now held by this transaction), else its run's id.

    A concurrent repeat waits on the claimed row, then finds the run this one made (or, if
    this one failed, claims it itself).
    """
    claimed = session.execute(
        insert(WebhookDelivery)
        .values(webhook_id=actor.webhook_id, delivery_id=delivery_id)
        .on_conflict_do_nothing()
        .returning(WebhookDelivery.delivery_id)
    ).first()
    if claimed is not None:
        return None
    seen = session.scalar(
        select(WebhookDelivery.execution_id).where(
            WebhookDelivery.webhook_id == actor.webhook_id,
            WebhookDelivery.delivery_id == delivery_id,
        )
    )
    if seen is None:  # only inside the claiming transaction, which has committed by now
        raise InvalidState("this delivery is being started by another call: send it again")
    return uuid.UUID(str(seen))
