"""Key rotation: every stored secret sealed again with the first of STEPWISE_SECRET_KEYS.

The operator's work (`stepwise reseal`), across every workspace: nothing is read out in
clear, each sealed value is only re-sealed. Functions take a session and never commit.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.settings import get_settings
from db.models import Automation, NotificationChannel, Webhook, WorkspaceSecret


def reseal_secrets(session: Session) -> int:
    """Seal every stored secret with the first key; returns how many."""
    box = get_settings().secret_box()
    secrets = session.execute(
        select(
            WorkspaceSecret.workspace_id, WorkspaceSecret.name, WorkspaceSecret.sealed
        ).with_for_update()
    ).all()
    for workspace_id, name, value in secrets:
        session.execute(
            update(WorkspaceSecret)
            .where(WorkspaceSecret.workspace_id == workspace_id, WorkspaceSecret.name == name)
            .values(sealed=box.reseal(value))
        )
    rows = session.execute(
        select(Automation.id, Automation.signing_secret)
        .where(Automation.signing_secret.is_not(None))
        .with_for_update()
    ).all()
    for automation_id, sealed in rows:
        session.execute(
            update(Automation)
            .where(Automation.id == automation_id)
            .values(signing_secret=box.reseal(str(sealed)))
        )
    hooks = session.execute(select(Webhook.id, Webhook.secret).with_for_update()).all()
    for webhook_id, sealed in hooks:
        session.execute(
            update(Webhook).where(Webhook.id == webhook_id).values(secret=box.reseal(sealed))
        )
    channels = session.execute(
        select(NotificationChannel.id, NotificationChannel.sealed_url).with_for_update()
    ).all()
    for channel_id, sealed in channels:
        session.execute(
            update(NotificationChannel)
            .where(NotificationChannel.id == channel_id)
            .values(sealed_url=box.reseal(sealed))
        )
    return len(rows) + len(secrets) + len(hooks) + len(channels)
