"""One unit of work: a transaction, the actor's role check, and what follows the commit.

`unit_of_work(actor, permission)` opens the transaction, checks the actor's role in
its workspace before anything is written, and yields a `Unit`. Work registered with
`Unit.after_commit` runs in order once the transaction has committed, and never when
it rolled back: a worker is only ever told about rows it can read. An after-commit
action that may fail without harm (an early dispatch: the minute tick covers it) is
registered with `best_effort=True` and only logged.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.orm import Session

from core.access import Actor
from core.vocabulary import AuditAction, AuditTarget, Permission
from db import idempotency
from db.session import session_scope
from db.workspaces import audit, authorize

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Unit:
    """The open transaction of one write, and the work waiting for its commit."""

    session: Session
    actor: Actor
    _after: list[tuple[Callable[[], None], bool]] = field(default_factory=list)

    def after_commit(self, work: Callable[[], None], *, best_effort: bool = False) -> None:
        """Run `work` once this unit has committed (not at all if it rolls back).

        The same function registered again runs once: a unit that writes ten schedules
        sends one early dispatch.
        """
        if all(waiting is not work for waiting, _ in self._after):
            self._after.append((work, best_effort))

    def audit(
        self, action: AuditAction, target: AuditTarget, target_id: uuid.UUID, **details: Any
    ) -> None:
        """Record what the actor did, in this transaction."""
        audit(self.session, self.actor, action, target, target_id, **details)

    def idempotent(
        self, key: tuple[str, str] | None, make: Callable[[], uuid.UUID]
    ) -> tuple[uuid.UUID, bool]:
        """`make()` once per `Idempotency-Key` (the key and its request's fingerprint):
        the id made, and whether it was made now (False: a repeat, nothing new made)."""
        if key is None:
            return make(), True
        made = idempotency.claim(self.session, self.actor, *key)
        if made is not None:
            return made, False
        made = make()
        idempotency.remember(self.session, self.actor, key[0], made)
        return made, True


@contextmanager
def unit_of_work(
    actor: Actor | Callable[[Session], Actor], permission: Permission | None = None
) -> Iterator[Unit]:
    """A transaction for `actor`, its role checked for `permission` first (if given).

    `actor` may be a function finding who acts in the unit's own transaction (the
    command line's local admin, made a member first): what it writes rolls back with
    the unit.
    """
    with session_scope() as session:
        acting = actor(session) if callable(actor) else actor
        if permission is not None:
            authorize(session, acting, permission)
        unit = Unit(session, acting)
        yield unit
    for work, best_effort in unit._after:
        if not best_effort:
            work()
            continue
        try:
            work()
        except Exception as exc:  # e.g. Redis away: the write stands, the tick covers it
            log.warning("saved; a follow-up was not sent (%s)", type(exc).__name__)


def read(fn: Callable[..., T], *args: Any, actor: Actor | None = None, **kwargs: Any) -> T:
    """`fn(session, *args, actor=actor, **kwargs)` in its own short read transaction
    (without `actor` for a read about the deployment, such as the scheduler's last tick).

    The `db` read functions scope by the actor's workspace themselves. The transaction is
    READ ONLY: a write reached through here (which would skip the role check and the
    audit row of `unit_of_work`) fails in PostgreSQL instead of being made.
    """
    with session_scope() as session:
        session.execute(text("SET TRANSACTION READ ONLY"))
        if actor is None:
            return fn(session, *args, **kwargs)
        return fn(session, *args, actor=actor, **kwargs)
