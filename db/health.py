"""What readiness and `stepwise doctor` read from PostgreSQL: the migration, the clock, the tick.

Functions take a session and write nothing. The head migration is the newest revision in
`alembic/versions` of this very code: a database behind it (migrations not run) is not
ready for this process. One ahead of it, at a revision this code does not know, was
migrated by a newer release during a rolling deploy: migrations only add what older
code can ignore (docs/OPERATIONS.md), so that is ready.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from core.secrets import SecretBox, SecretUnreadable
from db.figures import Liveness, scheduler_liveness
from db.models import Automation, NotificationChannel, Webhook, WorkspaceSecret
from db.session import db_now

ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def _script() -> Any:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))


def head_revision() -> str | None:
    """The newest migration this code ships (alembic's head)."""
    head: str | None = _script().get_current_head()
    return head


@lru_cache(maxsize=1)
def known_revisions() -> frozenset[str]:
    """Every migration this code ships."""
    return frozenset(revision.revision for revision in _script().walk_revisions())


@dataclass(frozen=True)
class DatabaseState:
    revision: str | None  # the database's (alembic_version), None before any migration
    head: str | None  # this code's
    now: datetime  # PostgreSQL's clock, the one that decides what is due
    liveness: Liveness  # the scheduler's last dispatch tick

    @property
    def at_head(self) -> bool:
        return self.revision is not None and self.revision == self.head

    @property
    def ahead(self) -> bool:
        """Migrated by a newer release than this code (a revision it does not know)."""
        return self.revision is not None and self.revision not in known_revisions()


def database_state(session: Session) -> DatabaseState:
    """The database's migration, clock and scheduler tick, in one short transaction."""
    has_version = session.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
    revision = (
        session.scalar(text("SELECT version_num FROM alembic_version LIMIT 1"))
        if has_version
        else None
    )
    if revision is None:  # no schema yet: no heartbeats table either
        now = db_now(session)
        return DatabaseState(None, head_revision(), now, Liveness(now=now, dispatch_at=None))
    liveness = scheduler_liveness(session)
    return DatabaseState(revision, head_revision(), liveness.now, liveness)


def unreadable_secrets(session: Session, box: SecretBox) -> int:
    """How many stored secrets (workspace secrets, signing secrets, webhook secrets,
    notification channel URLs) none of `box`'s keys opens: a key was dropped before
    `stepwise reseal` ran."""
    sealed = [
        *session.scalars(select(WorkspaceSecret.sealed)),
        *session.scalars(
            select(Automation.signing_secret).where(Automation.signing_secret.is_not(None))
        ),
        *session.scalars(select(Webhook.secret)),
        *session.scalars(select(NotificationChannel.sealed_url)),
    ]
    unreadable = 0
    for value in sealed:
        try:
            box.open(str(value))
        except SecretUnreadable:
            unreadable += 1
    return unreadable
