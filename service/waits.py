"""Waits resolved from outside a run: an agent's callback, a person's approval or rejection.

Each is one transaction (`db.waits`: the run's row locked first, the wait resolved once);
the message that wakes a parked run is sent only once it has committed, so the worker
that takes it finds the resolution. A callback proves itself by its signed token
(`core.waits`), opened with the deployment's keys before anything is read; a decision is
a person's (or an API token's), whose role the database checks.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import OperationalError

from core.access import Actor
from core.settings import get_settings
from core.waits import WaitPurpose, decision_comment, open_token, parse_callback
from db import waits
from db.session import session_scope
from db.waits import OpenWait, Resolution
from service.unit import read, unit_of_work
from tasks import send

log = logging.getLogger(__name__)


def _wake(resolution: Resolution) -> None:
    """Send the woken run's message; best effort: the resolution has committed, and a
    waiting run whose wake-up is lost is sent again by housekeeping."""
    if resolution.wake is None:
        return
    try:
        send.send_run(resolution.wake)
    except Exception as exc:  # e.g. Redis away: housekeeping re-sends it
        log.warning("a wait was resolved; its run's wake-up was not sent (%s)", type(exc).__name__)


T = TypeVar("T")
DEADLOCK = "40P01"


def _deadlock_retried(work: Callable[[], T]) -> T:
    """`work()`, once more if PostgreSQL chose it as a deadlock's victim (nothing of it was
    written): a resolution at the very instant its wait times out meets the engine's
    ending of it."""
    try:
        return work()
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != DEADLOCK:
            raise
        log.info("a wait's resolution met a deadlock; trying it once more")
        return work()


def callback(token: str, body: bytes, *, admit: Callable[[int], None] | None = None) -> Resolution:
    """Resolve the async step the callback `token` names with the answer in `body` (output,
    error or progress). In this order, nothing written on any: TokenRefused for a token
    that proves nothing, CallbackUnreadable / ValidationFailed for a body that is not an
    answer, WaitClosed / WaitGone when the wait is no longer open. A woken run's message
    is sent after commit (`_wake`). `admit(step_run_id)`, given, may refuse a proven call
    (the API's calls a minute) before the body is looked at."""
    opened = open_token(get_settings().secret_box(), token, WaitPurpose.CALLBACK)
    if admit is not None:
        admit(opened.step_run_id)
    answer = parse_callback(body)

    def resolve() -> Resolution:
        with session_scope() as session:
            return waits.resolve(session, opened, answer)

    resolution = _deadlock_retried(resolve)
    _wake(resolution)
    return resolution


def decide(
    execution_id: uuid.UUID,
    step_key: str,
    *,
    approved: bool,
    comment: str | None = None,
    actor: Actor,
) -> Resolution:
    """Approve or reject the approval step `step_key` of a run, as `actor` (whose role must
    be at least the step's), audited; the woken run's message sent after commit."""
    checked = decision_comment(comment)

    def decide_once() -> Resolution:
        with unit_of_work(actor) as unit:
            made = waits.decide(unit.session, actor, execution_id, step_key, approved, checked)
            unit.after_commit(lambda: _wake(made))
        return made

    return _deadlock_retried(decide_once)


def open_waits(*, actor: Actor, limit: int = 200) -> list[OpenWait]:
    """The open waits of the actor's workspace, soonest deadline first."""
    return read(waits.open_waits, actor=actor, limit=limit)
