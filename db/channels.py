"""Notification channels and each automation's choice of them, as rows.

A channel's apprise URL (read and checked above the database, `service.channels`) is
sealed at rest like a workspace secret (core.secrets) and never read back by a person:
pages and the API show `redacted` only. Each automation's rule names the channels its
notices go to and after how many consecutive failed runs a failure notice is sent. The
evaluator (db/notices.py) opens a channel's URL only to deliver, for the notice's
workspace. Functions take a session, scope every statement by the actor's workspace
and never commit; the role check and the audit row are the caller's (`service`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.access import Actor
from core.errors import NotFound, ValidationFailed
from core.limits import MAX_FAILURE_THRESHOLD
from core.notify import ChannelInput, redact
from core.settings import get_settings
from core.vocabulary import Permission
from db.models import Automation, NotificationChannel, NotifyRule, NotifyRuleChannel
from db.workspaces import authorize

# --- channels -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelInfo:
    """What anyone in the workspace may know of a channel (never its URL)."""

    id: uuid.UUID
    name: str
    redacted: str
    created_by: str
    created_at: datetime


def list_channels(session: Session, *, actor: Actor) -> list[ChannelInfo]:
    """The workspace's channels by name, redacted."""
    authorize(session, actor, Permission.READ)
    rows = session.execute(
        select(
            NotificationChannel.id,
            NotificationChannel.name,
            NotificationChannel.redacted,
            NotificationChannel.created_by,
            NotificationChannel.created_at,
        )
        .where(NotificationChannel.workspace_id == actor.workspace_id)
        .order_by(NotificationChannel.name)
    ).all()
    return [ChannelInfo(**row._mapping) for row in rows]


def add_channel(session: Session, checked: ChannelInput, *, actor: Actor) -> ChannelInfo:
    """A new channel of the actor's workspace, its URL sealed (a name it has is refused)."""
    taken = session.scalar(
        select(NotificationChannel.id).where(
            NotificationChannel.workspace_id == actor.workspace_id,
            NotificationChannel.name == checked.name,
        )
    )
    if taken is not None:
        raise ValidationFailed.single("name", "a channel of this name exists: pick another")
    channel = NotificationChannel(
        workspace_id=actor.workspace_id,
        name=checked.name,
        sealed_url=get_settings().secret_box().seal(checked.url),
        redacted=redact(checked.url),
        created_by=actor.name,
    )
    session.add(channel)
    session.flush()
    return ChannelInfo(
        channel.id, channel.name, channel.redacted, channel.created_by, channel.created_at
    )


def delete_channel(session: Session, channel_id: uuid.UUID, *, actor: Actor) -> str:
    """Delete a channel of the actor's workspace, returning its name; automations stop
    sending to it."""
    name = session.scalar(
        delete(NotificationChannel)
        .where(
            NotificationChannel.id == channel_id,
            NotificationChannel.workspace_id == actor.workspace_id,
        )
        .returning(NotificationChannel.name)
    )
    if name is None:
        raise NotFound(f"channel {channel_id} does not exist in this workspace")
    return str(name)


@dataclass(frozen=True)
class ChannelTarget:
    """A channel opened for delivery: its name and its URL in clear. Never shown or logged."""

    id: uuid.UUID
    name: str
    url: str


def open_channel(
    session: Session, workspace_id: uuid.UUID, channel_id: uuid.UUID
) -> ChannelTarget | None:
    """The channel's URL, opened, for the evaluator acting for `workspace_id` (None if gone)."""
    row = session.execute(
        select(NotificationChannel.name, NotificationChannel.sealed_url).where(
            NotificationChannel.id == channel_id, NotificationChannel.workspace_id == workspace_id
        )
    ).first()
    if row is None:
        return None
    return ChannelTarget(channel_id, row.name, get_settings().secret_box().open(row.sealed_url))


def channel_of(session: Session, channel_id: uuid.UUID, *, actor: Actor) -> ChannelTarget:
    """A channel of the actor's workspace, opened (an admin's "Send test"); NotFound if not
    theirs."""
    target = open_channel(session, actor.workspace_id, channel_id)
    if target is None:
        raise NotFound(f"channel {channel_id} does not exist in this workspace")
    return target


# --- an automation's notifications ---------------------------------------------------------


@dataclass(frozen=True)
class Notifications:
    """Where an automation's notices go, and after how many consecutive failed runs."""

    channel_ids: tuple[uuid.UUID, ...] = ()
    failure_threshold: int = 1


def get_notifications(session: Session, automation_id: uuid.UUID, *, actor: Actor) -> Notifications:
    """The automation's notification settings (none chosen: no channels, threshold 1)."""
    authorize(session, actor, Permission.READ)
    _automation_in(session, actor, automation_id)
    threshold = session.scalar(
        select(NotifyRule.failure_threshold).where(NotifyRule.automation_id == automation_id)
    )
    if threshold is None:
        return Notifications()
    ids = session.scalars(
        select(NotifyRuleChannel.channel_id)
        .join(NotificationChannel, NotificationChannel.id == NotifyRuleChannel.channel_id)
        .where(NotifyRuleChannel.automation_id == automation_id)
        .order_by(NotificationChannel.name)
    ).all()
    return Notifications(tuple(ids), threshold)


def set_notifications(
    session: Session,
    automation_id: uuid.UUID,
    channel_ids: Sequence[uuid.UUID],
    failure_threshold: int,
    *,
    actor: Actor,
) -> dict[str, list[Any]]:
    """Choose the automation's channels and threshold; returns what changed, old and new.

    Choosing no channel turns its notifications off. Only runs that finish from now
    on count: a rule never reports history it was not there for.
    """
    _automation_in(session, actor, automation_id)
    if not 1 <= failure_threshold <= MAX_FAILURE_THRESHOLD:
        raise ValidationFailed.single(
            "failure_threshold", f"give a whole number from 1 to {MAX_FAILURE_THRESHOLD}"
        )
    wanted = set(channel_ids)
    mine = set(
        session.scalars(
            select(NotificationChannel.id).where(
                NotificationChannel.workspace_id == actor.workspace_id,
                NotificationChannel.id.in_(wanted),
            )
        ).all()
    )
    if wanted - mine:
        raise ValidationFailed.single("channels", "choose channels of this workspace")
    old = get_notifications(session, automation_id, actor=actor)
    session.execute(
        insert(NotifyRule)
        .values(
            automation_id=automation_id,
            workspace_id=actor.workspace_id,
            failure_threshold=failure_threshold,
            failure_streak=0,
        )
        .on_conflict_do_update(
            index_elements=["automation_id"],
            # Switched on again after a time without channels: runs of that time never count.
            set_={"failure_threshold": failure_threshold}
            if old.channel_ids
            else {
                "failure_threshold": failure_threshold,
                "seen_until": func.now(),
                "failure_streak": 0,
                "last_failed_execution_id": None,
            },
        )
    )
    session.execute(
        delete(NotifyRuleChannel).where(NotifyRuleChannel.automation_id == automation_id)
    )
    for channel_id in sorted(wanted):
        session.add(NotifyRuleChannel(automation_id=automation_id, channel_id=channel_id))
    changed: dict[str, list[Any]] = {
        "channels": [sorted(map(str, old.channel_ids)), sorted(map(str, wanted))],
        "failure_threshold": [old.failure_threshold, failure_threshold],
    }
    return {k: v for k, v in changed.items() if v[0] != v[1]}


def _automation_in(session: Session, actor: Actor, automation_id: uuid.UUID) -> None:
    found = session.scalar(
        select(Automation.id).where(
            Automation.id == automation_id,
            Automation.workspace_id == actor.workspace_id,
            Automation.archived_at.is_(None),
        )
    )
    if found is None:
        raise NotFound(f"automation {automation_id} does not exist (or was deleted)")
