"""Sending work to the workers: a run's message and an early dispatch, on the process's broker.

The one way the API, the dashboard, the CLI and the workers themselves put work on
the queue. Messages are built by actor name and queue, as Dramatiq's own
`Actor.message_with_options` builds them, so a process that only sends declares no
actor and builds no runner (`tasks/actors.py` declares the actors under these names,
on these queues).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import dramatiq
from dramatiq.errors import ActorNotFound

from db.runs import RunMessage
from tasks.broker import DISPATCH_QUEUE, RUN_QUEUE, URGENT_QUEUE, enqueue_many, setup_broker

RUN_ACTOR = "run_execution"
DISPATCH_ACTOR = "dispatch"
# The queue each actor consumes, for a message sent by name.
ACTOR_QUEUES = {
    RUN_ACTOR: RUN_QUEUE,
    DISPATCH_ACTOR: DISPATCH_QUEUE,
    "housekeeping": DISPATCH_QUEUE,
    "notify_tick": DISPATCH_QUEUE,
}

Send = Callable[[RunMessage], None]
SendMany = Callable[[Sequence[RunMessage]], None]


def send_run(message: RunMessage) -> None:
    """Hand one execution to the workers, `message.delay_ms` from now, with its retry budget."""
    setup_broker().enqueue(_run_message(message), delay=_delay(message))


def send_runs(messages: Sequence[RunMessage]) -> None:
    """`send_run` for each message, the Redis round trips shared (the same messages)."""
    enqueue_many(setup_broker(), ((_run_message(m), _delay(m)) for m in messages))


def dispatch_soon() -> None:
    """Dispatch now rather than at the next minute tick, so a slot due soon is not late."""
    send_message(DISPATCH_ACTOR)


def send_message(
    actor_name: str,
    *,
    args: Iterable[Any] = (),
    kwargs: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> None:
    """Send a message to the actor named `actor_name`, on its queue, now."""
    queue_name = ACTOR_QUEUES.get(actor_name)
    if queue_name is None:
        raise ActorNotFound(actor_name)  # type: ignore[no-untyped-call]
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=queue_name,
        actor_name=actor_name,
        args=tuple(args),
        kwargs=kwargs or {},
        options=options or {},
    )
    setup_broker().enqueue(message)


def _run_message(message: RunMessage) -> dramatiq.Message[Any]:
    """The `run_execution` message for a run, on the urgent queue for an urgent one."""
    return dramatiq.Message(
        queue_name=URGENT_QUEUE if message.urgent else RUN_QUEUE,
        actor_name=RUN_ACTOR,
        args=(str(message.execution_id),),
        kwargs={},
        options=_options(message),
    )


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
