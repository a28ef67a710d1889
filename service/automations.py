"""Automations: create, edit, delete, and their signing secrets, for every entry point.

Each public function is one unit of work (`service.unit`): the EDIT role checked first,
the change made (`db.automations`) and audited. A `*_in` function makes the same
change inside a unit already open (a definitions file is applied as one unit:
`service.definitions`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from core.access import Actor
from core.automation import AutomationInput
from core.vocabulary import AuditAction, AuditTarget, Permission
from db import automations
from db.models import Automation
from service.unit import Unit, read, unit_of_work


@dataclass(frozen=True)
class NewAutomation:
    automation: Automation
    signing_secret: str | None  # in clear: shown to its creator this once


def create(
    data: AutomationInput, *, actor: Actor, idempotency_key: tuple[str, str] | None = None
) -> NewAutomation:
    """A new automation and its signing secret; a repeat of an `Idempotency-Key` (the key
    and the request's fingerprint) answers with the automation it made, without its
    signing secret: that is shown once, in the first answer (a repeat could otherwise
    read, unaudited, a secret rotated since)."""
    with unit_of_work(actor, Permission.EDIT) as unit:
        made, new = unit.idempotent(idempotency_key, lambda: create_in(unit, data).id)
        automation = automations.live_automation(unit.session, made, actor=actor)
        secret = automations.signing_secret(unit.session, made, actor=actor) if new else None
        return NewAutomation(automation, secret)


def create_in(unit: Unit, data: AutomationInput) -> Automation:
    """`create` inside an open unit (its role already checked)."""
    automation = automations.create_automation(unit.session, data, actor=unit.actor)
    unit.audit(AuditAction.CREATE, AuditTarget.AUTOMATION, automation.id, name=automation.name)
    return automation


def update(automation_id: uuid.UUID, data: AutomationInput, *, actor: Actor) -> Automation:
    """Replace every field of the automation; the row as stored."""
    with unit_of_work(actor, Permission.EDIT) as unit:
        return update_in(unit, automation_id, data)


def update_in(unit: Unit, automation_id: uuid.UUID, data: AutomationInput) -> Automation:
    """`update` inside an open unit; the audit row names each field changed, old and new."""
    automation, changed = automations.update_automation(
        unit.session, automation_id, data, actor=unit.actor
    )
    unit.audit(AuditAction.EDIT, AuditTarget.AUTOMATION, automation.id, changed=changed)
    return automation


def delete(automation_id: uuid.UUID, *, actor: Actor) -> int:
    """Archive the automation: its schedules stop, its open runs are cancelled (how many)."""
    with unit_of_work(actor, Permission.EDIT) as unit:
        cancelled = automations.delete_automation(unit.session, automation_id, actor=actor)
        unit.audit(AuditAction.DELETE, AuditTarget.AUTOMATION, automation_id, cancelled=cancelled)
        return cancelled


def rotate_signing_secret(automation_id: uuid.UUID, *, actor: Actor) -> str:
    """A new signing secret (returned in clear, to show once); the old one stops at once."""
    with unit_of_work(actor, Permission.EDIT) as unit:
        secret = automations.rotate_signing_secret(unit.session, automation_id, actor=actor)
        unit.audit(AuditAction.ROTATE_SECRET, AuditTarget.AUTOMATION, automation_id)
        return secret


def call_signing_secret(automation_id: uuid.UUID) -> str | None:
    """The signing secret of the automation an agent call names, for the bundled demo agent
    to check the call with (nothing written; None for an unknown or deleted automation)."""
    return read(automations.call_signing_secret, automation_id)


def signing_secret(automation_id: uuid.UUID, *, actor: Actor) -> str | None:
    """The signing secret in clear, for an editor to give to the agent (nothing written)."""
    with unit_of_work(actor, Permission.EDIT) as unit:
        return automations.signing_secret(unit.session, automation_id, actor=actor)
