"""The actors: dispatch (every minute), run_execution (one per run), housekeeping.

`run_execution` holds its Dramatiq thread only while it claims the run: the
run's steps go on in the process's runner (`tasks/runner.py`).

Actors are declared on the broker that `setup_broker` builds (Dramatiq binds an
actor to its broker when it is declared, so importing this module sets the broker
up, with the runner's lifecycle: this is a worker). Each periodic actor is a shell
around `tasks/periodic.py`, handing it `send_run` (`tasks/send.py`), the one way a
run reaches the queue.
"""

from __future__ import annotations

import logging
import uuid

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import CurrentMessage
from periodiq import cron

from core.errors import AgentRejected, StepFailed
from core.vocabulary import FailureReport
from tasks import lifecycle, notify, periodic, queues
from tasks.broker import DISPATCH_QUEUE, RUN_QUEUE, URGENT_QUEUE, setup_broker
from tasks.flight import report_failure
from tasks.send import DISPATCH_ACTOR, RUN_ACTOR, send_run, send_runs

broker = setup_broker()
lifecycle.install(broker)
log = logging.getLogger(__name__)
EVERY_MINUTE = cron("* * * * *")


@dramatiq.actor(
    actor_name=DISPATCH_ACTOR,
    queue_name=DISPATCH_QUEUE,
    periodic=EVERY_MINUTE,
    max_retries=0,
    time_limit=55_000,
)
def dispatch() -> None:
    periodic.tick_dispatch(send_run, send_many=send_runs)


# A run that failed for good is an expected outcome, stored on its row: Dramatiq logs
# these in one line and dead-letters the message, with no traceback in the worker log.
RUN_FAILURES = (AgentRejected, StepFailed)


@dramatiq.actor(actor_name=RUN_ACTOR, queue_name=RUN_QUEUE, max_retries=0, throws=RUN_FAILURES)
def run_execution(execution_id: str) -> None:
    """Claim the run and hand it to this process's runner, or report its failure."""
    message = CurrentMessage.get_current_message()
    options = message.options if message is not None else {}
    if options.get("report"):
        try:
            report_failure(uuid.UUID(execution_id), FailureReport(options["report"]))
        except RUN_FAILURES as exc:
            log.warning("run %s failed: %s", execution_id, exc)
            if message is not None and (message_id := options.get("redis_message_id")):
                # One dead letter per run: this one; an earlier attempt's goes.
                queues.keep_newest_dead_letter(
                    uuid.UUID(execution_id), q_name(message.queue_name), message_id
                )
            raise
        return
    lifecycle.get_runner(send_run).gate.accept(
        uuid.UUID(execution_id),
        retries=options.get("retries", 0),
        max_retries=options.get("max_retries", 0),
        send=send_run,
        start_at_ms=options.get("start_at"),
        urgent=message is not None and q_name(message.queue_name) == URGENT_QUEUE,
    )


@dramatiq.actor(queue_name=DISPATCH_QUEUE, periodic=EVERY_MINUTE, max_retries=0, time_limit=55_000)
def housekeeping() -> None:
    periodic.tick_housekeeping(send_run)


@dramatiq.actor(queue_name=DISPATCH_QUEUE, periodic=EVERY_MINUTE, max_retries=0, time_limit=55_000)
def notify_tick() -> None:
    """Failure notifications: notices from finished runs and stopped schedules, sent."""
    notify.tick_notify()
