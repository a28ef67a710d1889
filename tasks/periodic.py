"""The scheduler's periodic work: dispatch due schedules, recover lost runs, purge.

`tasks/actors.py` declares the periodic actors and hands each function here a
`send` callable (`tasks.send.send_run`); nothing here sends by itself, so the order
"commit, then send" is visible at every call. The database work lives in `db/`;
running an execution is the runner's (`tasks/runner.py`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial

from sqlalchemy.orm import Session

from core.limits import WAKE_HORIZON_S
from core.settings import get_settings
from db import dispatch as dispatching
from db import idempotency, recovery
from db.runs import RunMessage
from db.session import db_now, once_more_if_disconnected, session_scope
from tasks import metrics
from tasks.send import Send, SendMany

log = logging.getLogger(__name__)


# --- dispatch ----------------------------------------------------------------

LOCKED_RETRIES = 20


def _one_by_one(send: Send) -> SendMany:
    def send_many(messages: Sequence[RunMessage]) -> None:
        for message in messages:
            send(message)

    return send_many


def _send_batch(send_many: SendMany, messages: list[RunMessage], since: float) -> int:
    """Send runs whose delays were measured at monotonic time `since`; returns how many."""
    elapsed_ms = int((time.monotonic() - since) * 1000)
    send_many([replace(m, delay_ms=m.delay_ms - elapsed_ms) for m in messages])
    return len(messages)


class _Sender:
    """Sends each committed batch from one thread while the next batch is being claimed.

    Redis then works while PostgreSQL does, and batches still go out in the order
    they were committed. `close()` waits for every batch handed over and raises
    the first error of a send.
    """

    def __init__(self, send_many: SendMany) -> None:
        self._send_many = send_many
        self._batches: queue.Queue[tuple[list[RunMessage], float] | None] = queue.Queue(2)
        self._error: BaseException | None = None
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="dispatch-sender", daemon=True)
        self._thread.start()

    def put(self, messages: list[RunMessage], since: float) -> None:
        if self._error is not None:
            raise self._error
        if messages:
            self._batches.put((messages, since))

    def close(self) -> int:
        self._batches.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.sent

    def _run(self) -> None:
        while (batch := self._batches.get()) is not None:
            if self._error is None:  # after a failed send, the rest is left to housekeeping
                try:
                    self.sent += _send_batch(self._send_many, *batch)
                except BaseException as exc:
                    self._error = exc


def dispatch_due(
    send: Send,
    now: datetime | None = None,
    *,
    send_many: SendMany | None = None,
    tally: dispatching.SlotTally | None = None,
) -> int:
    """Dispatch every due schedule, batch after batch, in `dispatch_lanes` transactions
    at once; returns the runs sent.

    Each batch's runs go out together through `send_many` (one by one through
    `send` without it), once its transaction has committed, while the next batches
    are claimed. `now` is the database's clock unless a test injects one. The slots
    handled are added to `tally`.
    """
    settings = get_settings()
    config = dispatching.DispatchConfig(
        horizon_s=settings.dispatch_horizon_s,
        grace_s=settings.misfire_grace_s,
        batch=settings.dispatch_batch,
    )
    sender = _Sender(send_many or _one_by_one(send))
    try:
        for _ in range(LOCKED_RETRIES):
            _in_lanes(settings.dispatch_lanes, partial(_lane, config, now, sender), tally)
            # SKIP LOCKED passed over schedules another transaction held (another
            # dispatcher, or a run updating its counters): wait briefly and take them
            # now rather than a minute late at the next tick.
            with session_scope() as session:
                clock = now or db_now(session)
                if not dispatching.count_due(session, now=clock, horizon_s=config.horizon_s):
                    break
            time.sleep(0.05)
    finally:
        sent = sender.close()  # what was committed is sent, even if a later batch failed
    return sent


def _lane(
    config: dispatching.DispatchConfig,
    now: datetime | None,
    sender: _Sender,
    tally: dispatching.SlotTally,
    stop: threading.Event,
) -> None:
    """Batch after batch, each in its own transaction, until one comes back short (the
    rest is dispatched or held by another transaction) or another lane failed."""
    while not stop.is_set():
        with session_scope() as session:
            clock = now or db_now(session)
            started = time.monotonic()
            messages, claimed = dispatching.dispatch_batch(
                session, now=clock, config=config, tally=tally
            )
        # Sent only after the commit: a worker must find its row.
        sender.put(messages, started)
        if claimed < config.batch:
            return


def _in_lanes(
    lanes: int,
    lane: Callable[[dispatching.SlotTally, threading.Event], None],
    tally: dispatching.SlotTally | None,
) -> None:
    """Run `lane` in `lanes` threads side by side and wait for them all; raises the first
    error, after which the other lanes stop at the end of their batch.

    `SKIP LOCKED` gives each lane its own batches, so one batch's planning in Python
    goes on while another's statements run in PostgreSQL. Each lane counts in its own
    tally, added to `tally` even when a lane failed (what was committed counts).
    """
    stop = threading.Event()
    tallies = [dispatching.SlotTally() for _ in range(lanes)]
    errors: list[BaseException] = []

    def run(own: dispatching.SlotTally) -> None:
        try:
            lane(own, stop)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=run, args=(own,), name=f"dispatch-lane-{n}", daemon=True)
        for n, own in enumerate(tallies)
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    finally:
        # Interrupted (the tick's time limit): each lane stops after its batch, which
        # is committed and handed to the sender before this returns.
        stop.set()
        for thread in threads:
            thread.join()
        if tally is not None:
            for own in tallies:
                tally.add(own)
    if errors:
        raise errors[0]


def tick_dispatch(send: Send, *, send_many: SendMany | None = None) -> int:
    """The minute tick: dispatch, then record that the scheduler is alive (done again once
    on a connection a database restart closed)."""
    started = time.monotonic()
    with metrics.tick("dispatch"):
        sent = once_more_if_disconnected(lambda: _tick_dispatch(send, send_many))
    metrics.DISPATCH_SECONDS.observe(time.monotonic() - started)
    return sent


def _tick_dispatch(send: Send, send_many: SendMany | None) -> int:
    tally = dispatching.SlotTally()
    try:
        sent = dispatch_due(send, send_many=send_many, tally=tally)
    finally:  # what was committed counts, even if a later batch failed
        metrics.slots_dispatched(tally)
    with session_scope() as session:
        dispatching.beat(session, "dispatch", sent=sent)
    log.info("dispatch: %d run(s) sent", sent)
    return sent


# --- housekeeping ------------------------------------------------------------


def recover_stranded(send: Send, *, leases_only: bool = False) -> int:
    """Send again every run whose message was lost or whose worker died; returns how many.

    Housekeeping calls it every minute. Every worker's runner also calls it for
    expired leases only, every third of a lease (`tasks/leases.py`), so a killed
    worker's runs start again about one lease after its last renewal.
    """
    settings = get_settings()
    sent = 0
    gave_up: list[int] = []
    while True:
        with session_scope() as session:
            resends = recovery.stranded_executions(
                session,
                requeue_after_s=None if leases_only else settings.requeue_after_s,
                resend_after_s=settings.lease_s,
                limit=1000,
                gave_up=gave_up,
            )
        metrics.GAVE_UP.inc(gave_up.pop())
        for item in resends:
            send(item)
        sent += len(resends)
        metrics.RECOVERED.labels("lease_sweep" if leases_only else "housekeeping").inc(len(resends))
        if len(resends) < 1000:
            return sent


WAKE_BATCH = 1000


def send_wakes_due(send: Send) -> int:
    """Send the wake-up of each parked run whose time has come within WAKE_HORIZON_S and
    whose wake-up was not sent yet (its wait was far off when it parked), batch after batch,
    each sent after its commit; returns how many.

    Housekeeping's minute tick runs it first: the tick runs every minute on the scheduler
    and does nothing else time-critical (the dispatch tick's time is the schedules'), and
    its re-send of lost wake-ups (`recover_stranded`) is the safety net of this pass. A
    wake-up is thus in Redis, and held by a worker, for at most WAKE_HORIZON_S.
    """
    sent = 0
    while True:
        with session_scope() as session:
            wakes = recovery.wakes_due(session, horizon_s=WAKE_HORIZON_S, limit=WAKE_BATCH)
        started = time.monotonic()
        for message in wakes:
            elapsed_ms = int((time.monotonic() - started) * 1000)
            send(replace(message, delay_ms=max(0, message.delay_ms - elapsed_ms)))
        sent += len(wakes)
        if len(wakes) < WAKE_BATCH:
            return sent


def _in_batches(purge: Callable[[Session, int], int]) -> int:
    """Run `purge(session, batch)` in short transactions until a batch comes back short;
    how many rows went."""
    batch = get_settings().retention_batch
    deleted = 0
    while True:
        with session_scope() as session:
            went = purge(session, batch)
        deleted += went
        if went < batch:
            return deleted


def purge_old_history() -> int:
    days = get_settings().retention_days
    return _in_batches(lambda s, n: recovery.purge_history(s, older_than_days=days, batch=n))


def purge_old_idempotency_keys() -> int:
    """Forget API Idempotency-Keys past their retention, in batches; how many."""
    hours = get_settings().idempotency_retention_h
    return _in_batches(lambda s, n: idempotency.purge(s, older_than_hours=hours, batch=n))


def tick_housekeeping(send: Send) -> None:
    """The minute tick: send the wake-ups of parked runs now within the wake horizon, re-send
    lost runs, purge old history and old idempotency keys,
    record the pass (done again once on a connection a database restart closed)."""
    with metrics.tick("housekeeping"):
        once_more_if_disconnected(lambda: _tick_housekeeping(send))


def _tick_housekeeping(send: Send) -> None:
    woken = send_wakes_due(send)
    recovered = recover_stranded(send)
    purged = purge_old_history()
    keys = purge_old_idempotency_keys()
    with session_scope() as session:
        dispatching.beat(
            session,
            "housekeeping",
            recovered=recovered,
            purged=purged,
            idempotency_keys=keys,
            wakes_sent=woken,
        )
    if recovered or purged:
        log.warning(
            "housekeeping: re-sent %d lost run(s), purged %d old execution(s)", recovered, purged
        )
