"""How the scheduler's actors work: dispatch due schedules, recover lost runs, purge.

`tasks/actors.py` declares the actors and hands each function here a `send`
callable that puts a run on the queue through the actor's own API; nothing here
sends by itself, so the order "commit, then send" is visible at every call.
The database work lives in `db/`; running an execution is `tasks/runner.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from core.settings import get_settings
from db import dispatch as dispatching
from db import runs
from db.runs import RunMessage
from db.session import db_now, session_scope

log = logging.getLogger("stepwise")
Send = Callable[[RunMessage], None]


def send_all(send: Send, messages: Iterable[RunMessage], since: float) -> int:
    """Send runs whose delays were measured at monotonic time `since`; returns how many."""
    elapsed_ms = int((time.monotonic() - since) * 1000)
    count = 0
    for message in messages:
        send(
            RunMessage(
                message.execution_id,
                message.max_retries,
                retries=message.retries,
                delay_ms=message.delay_ms - elapsed_ms,
            )
        )
        count += 1
    return count


# --- dispatch ----------------------------------------------------------------

LOCKED_RETRIES = 20


def dispatch_due(send: Send, now: datetime | None = None) -> int:
    """Dispatch every due schedule, batch after batch; returns the runs sent.

    `now` is the database's clock unless a test injects one.
    """
    settings = get_settings()
    config = dispatching.DispatchConfig(
        horizon_s=settings.dispatch_horizon_s,
        grace_s=settings.misfire_grace_s,
        batch=settings.dispatch_batch,
    )
    sent = 0
    for _ in range(LOCKED_RETRIES):
        while True:
            with session_scope() as session:
                clock = now or db_now(session)
                started = time.monotonic()
                messages, claimed = dispatching.dispatch_batch(session, now=clock, config=config)
            # Sent only after the commit: a worker must find its row.
            sent += send_all(send, messages, started)
            if claimed < config.batch:
                break
        # SKIP LOCKED passed over schedules another transaction held (another
        # dispatcher, or a run updating its counters): wait briefly and take them
        # now rather than a minute late at the next tick.
        with session_scope() as session:
            clock = now or db_now(session)
            if not dispatching.count_due(session, now=clock, horizon_s=config.horizon_s):
                break
        time.sleep(0.05)
    return sent


def tick_dispatch(send: Send) -> int:
    """The minute tick: dispatch, then record that the scheduler is alive."""
    sent = dispatch_due(send)
    with session_scope() as session:
        dispatching.beat(session, "dispatch", sent=sent)
    log.info("dispatch: %d run(s) sent", sent)
    return sent


# --- housekeeping ------------------------------------------------------------


def recover_stranded(send: Send, *, leases_only: bool = False) -> int:
    """Send again every run whose message was lost or whose worker died; returns how many.

    Housekeeping calls it every minute. Every worker's runner also calls it for
    expired leases only, every third of a lease (`tasks/runner.py`), so a killed
    worker's runs start again about one lease after its last renewal.
    """
    settings = get_settings()
    sent = 0
    while True:
        with session_scope() as session:
            resends = runs.stranded_executions(
                session,
                requeue_after_s=None if leases_only else settings.requeue_after_s,
                resend_after_s=settings.lease_s,
                limit=1000,
            )
        for item in resends:
            send(item)
        sent += len(resends)
        if len(resends) < 1000:
            return sent


def purge_old_history() -> int:
    settings = get_settings()
    deleted = 0
    while True:
        with session_scope() as session:
            batch = runs.purge_history(
                session, older_than_days=settings.retention_days, batch=settings.retention_batch
            )
        deleted += batch
        if batch < settings.retention_batch:
            return deleted


def tick_housekeeping(send: Send) -> None:
    """The minute tick: re-send lost runs, purge old history, record the pass."""
    recovered = recover_stranded(send)
    purged = purge_old_history()
    with session_scope() as session:
        dispatching.beat(session, "housekeeping", recovered=recovered, purged=purged)
    if recovered or purged:
        log.warning(
            "housekeeping: re-sent %d lost run(s), purged %d old execution(s)", recovered, purged
        )
