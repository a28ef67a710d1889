"""Notification channels: admins add, delete and test them; editors choose an automation's.

A channel's apprise URL is read here, above the database: checked (`core.notify`), read
by apprise and held to the egress policy (`tasks.notify.url_problem`) before its row is
written sealed. Every change is audited by the channel's name (and redacted form), never
its URL. A test message is sent once its delivery row has committed, outside any
transaction, and its outcome recorded like every delivery's.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from core.access import Actor
from core.errors import ValidationFailed
from core.notify import parse_channel
from core.vocabulary import AuditAction, AuditTarget, Permission
from db import channels, notices
from db.channels import ChannelInfo
from service.unit import Unit, unit_of_work
from tasks import notify
from tasks.notify import Outcome


def add_channel(name: str, url: str, *, actor: Actor) -> ChannelInfo:
    """A new channel (admins only), its URL sealed; audited by name and redacted form."""
    with unit_of_work(actor, Permission.MANAGE_CHANNELS) as unit:
        checked = parse_channel(name, url)
        if (problem := notify.url_problem(checked.url)) is not None:
            raise ValidationFailed.single("url", problem)
        added = channels.add_channel(unit.session, checked, actor=actor)
        unit.audit(
            AuditAction.ADD_CHANNEL,
            AuditTarget.CHANNEL,
            added.id,
            name=added.name,
            url=added.redacted,
        )
    return added


def delete_channel(channel_id: uuid.UUID, *, actor: Actor) -> None:
    """Delete a channel (admins only, audited); automations stop sending to it."""
    with unit_of_work(actor, Permission.MANAGE_CHANNELS) as unit:
        name = channels.delete_channel(unit.session, channel_id, actor=actor)
        unit.audit(AuditAction.DELETE_CHANNEL, AuditTarget.CHANNEL, channel_id, name=name)


def send_test(channel_id: uuid.UUID, *, actor: Actor) -> Outcome:
    """An admin's "Send test" to one channel (audited), recorded like every delivery."""
    with unit_of_work(actor, Permission.MANAGE_CHANNELS) as unit:
        target = channels.channel_of(unit.session, channel_id, actor=actor)
        unit.audit(AuditAction.TEST_CHANNEL, AuditTarget.CHANNEL, channel_id, name=target.name)
        outgoing = notices.start_test(unit.session, target, actor=actor)
    # Sent once the delivery row is committed, and outside the transaction: a slow
    # channel holds no connection.
    return notify.send_and_record(outgoing)


def set_notifications(
    automation_id: uuid.UUID,
    channel_ids: Sequence[uuid.UUID],
    failure_threshold: int,
    *,
    actor: Actor,
) -> None:
    """Choose the automation's channels and threshold (editors; audited, old and new).

    Choosing no channel turns its notifications off. Only runs that finish from now
    on count: a rule never reports history it was not there for.
    """
    with unit_of_work(actor, Permission.EDIT) as unit:
        choose(unit, automation_id, channel_ids, failure_threshold)


def choose(
    unit: Unit, automation_id: uuid.UUID, channel_ids: Sequence[uuid.UUID], failure_threshold: int
) -> None:
    """`set_notifications` inside a unit of work the caller holds (its role checked for
    editing), as `stepwise apply` changes many things in one transaction."""
    changed = channels.set_notifications(
        unit.session, automation_id, channel_ids, failure_threshold, actor=unit.actor
    )
    unit.audit(
        AuditAction.SET_NOTIFICATIONS, AuditTarget.AUTOMATION, automation_id, changed=changed
    )
