"""The actors: dispatch (every minute), run_execution (one per run), housekeeping.

`run_execution` holds its Dramatiq thread only while it claims the run: the
run's steps go on in the process's runner (`tasks/runner.py`).

Actors are declared on the broker that `setup_broker` builds (Dramatiq binds an
actor to its broker when it is declared, so importing this module sets the broker
up). Each actor is a shell around `tasks/engine.py`, handing it `send_run`: the
one way a run reaches the queue, through `run_execution`'s own API.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import q_name
from dramatiq.middleware import CurrentMessage
from periodiq import cron

from core.errors import AgentRejected, StepFailed
from core.vocabulary import FailureReport
from db.runs import RunMessage
from tasks import engine, notify, runner
from tasks.broker import DISPATCH_QUEUE, RUN_QUEUE, URGENT_QUEUE, enqueue_many, setup_broker

broker = setup_broker()
log = logging.getLogger(__name__)
EVERY_MINUTE = cron("* * * * *")


def _options(message: RunMessage) -> dict[str, Any]:
    options: dict[str, Any] = {"max_retries": message.max_retries}
    if message.retries:
        options["retries"] = message.retries
    if message.report is not None:
        options["report"] = str(message.report)
    if message.ahead_ms and message.delay_ms > 0:
        # The instant the run is due, on the clock Dramatiq's `eta` uses; rounded up,
        # so that a run never starts (nor is claimed) before its slot.
        options["start_at"] = math.ceil(time.time() * 1000) + message.delay_ms
    return options


def _delay(message: RunMessage) -> int | None:
    delay_ms = message.delay_ms - message.ahead_ms
    return delay_ms if delay_ms > 0 else None


def _message(message: RunMessage) -> dramatiq.Message[Any]:
    """The `run_execution` message for a run, on the urgent queue for an urgent one."""
    sent = run_execution.message_with_options(
        args=(str(message.execution_id),), **_options(message)
    )
    return sent.copy(queue_name=URGENT_QUEUE) if message.urgent else sent


def send_run(message: RunMessage) -> None:
    """Hand one execution to the workers, `message.delay_ms` from now, with its retry budget."""
    run_execution.broker.enqueue(_message(message), delay=_delay(message))


def send_runs(messages: Sequence[RunMessage]) -> None:
    """`send_run` for each message, the Redis round trips shared (the same messages)."""
    target = run_execution.broker  # the actor's own (a test may point it elsewhere)
    assert isinstance(target, RedisBroker)
    enqueue_many(target, ((_message(message), _delay(message)) for message in messages))


@dramatiq.actor(queue_name=DISPATCH_QUEUE, periodic=EVERY_MINUTE, max_retries=0, time_limit=55_000)
def dispatch() -> None:
    engine.tick_dispatch(send_run, send_many=send_runs)


# A run that failed for good is an expected outcome, stored on its row: Dramatiq logs
# these in one line and dead-letters the message, with no traceback in the worker log.
RUN_FAILURES = (AgentRejected, StepFailed)


@dramatiq.actor(queue_name=RUN_QUEUE, max_retries=0, throws=RUN_FAILURES)
def run_execution(execution_id: str) -> None:
    """Claim the run and hand it to this process's runner, or report its failure."""
    message = CurrentMessage.get_current_message()
    options = message.options if message is not None else {}
    if options.get("report"):
        try:
            runner.report_failure(uuid.UUID(execution_id), FailureReport(options["report"]))
        except RUN_FAILURES as exc:
            log.warning("run %s failed: %s", execution_id, exc)
            raise
        return
    runner.accept(
        uuid.UUID(execution_id),
        retries=options.get("retries", 0),
        max_retries=options.get("max_retries", 0),
        send=send_run,
        start_at_ms=options.get("start_at"),
        urgent=message is not None and q_name(message.queue_name) == URGENT_QUEUE,
    )


@dramatiq.actor(queue_name=DISPATCH_QUEUE, periodic=EVERY_MINUTE, max_retries=0, time_limit=55_000)
def housekeeping() -> None:
    engine.tick_housekeeping(send_run)


@dramatiq.actor(queue_name=DISPATCH_QUEUE, periodic=EVERY_MINUTE, max_retries=0, time_limit=55_000)
def notify_tick() -> None:
    """Failure notifications: notices from finished runs and stopped schedules, sent."""
    notify.tick_notify()
