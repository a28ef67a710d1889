"""The Dramatiq broker and its queues, built by a function with its middleware in one place.

Dramatiq's defaults are wrong for us (20 retries over a week, a 10-minute time
limit): each middleware is configured here, explicitly. Periodiq's middleware
must be present in every process that declares the periodic actors. Importing
this module builds nothing: `setup_broker()` does, once per process, before the
actors are declared (`dramatiq tasks.broker:setup_broker tasks.actors`). The
workers add their runner's lifecycle when their actors are declared
(`tasks/lifecycle.py`), so a process that only sends builds no runner. A process
`stepwise metered` started also gets Dramatiq's Prometheus middleware (`tasks/metrics.py`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from uuid import uuid4

import dramatiq
import redis
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name, iter_queue, q_name
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    MiddlewareError,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)
from dramatiq.worker import POST_PROCESS_MESSAGE_RETRY_DELAY_SECS, ConsumerThread
from periodiq import PeriodiqMiddleware

from core.errors import ConfigError
from core.settings import Settings, get_settings
from tasks.signals import OneStopRequest
from tasks.workers import WorkerBeacon

RUN_QUEUE = "default"  # every `run_execution` message but an urgent automation's
# Urgent automations' runs: their own queue, so a backlog in RUN_QUEUE does not hold
# them back (and a reserve of runner slots, `tasks/admission.py`).
URGENT_QUEUE = "urgent"
DISPATCH_QUEUE = "dispatch"  # the scheduler's periodic work
QUEUES = (RUN_QUEUE, URGENT_QUEUE, DISPATCH_QUEUE)

HEARTBEAT_TIMEOUT_MS = 20_000
MAINTENANCE_CHANCE = 100_000  # per million commands
HOP_CHUNK = 1000  # delayed messages moved to their queue in one Redis round trip
# The Dramatiq whose consumer thread `hop_in_batches` changes (tests/test_dispatch.py).
HOP_WRITTEN_FOR = "2.2.1"

_broker: RedisBroker | None = None


def build_broker(settings: Settings) -> RedisBroker:
    """A Redis broker with Stepwise's middleware; nothing global is touched."""
    settings.require_redis()
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        url=settings.redis_url,
        # A killed worker's prefetched messages go back to the queue once it has
        # missed heartbeats this long, at a maintenance pass (one in ten commands).
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
        middleware=[
            AgeLimit(),
            TimeLimit(time_limit=settings.execution_time_limit_s * 1000),
            ShutdownNotifications(),
            Callbacks(),
            Pipelines(),
            # Per-automation budgets travel in each message's options.
            Retries(
                max_retries=0,
                min_backoff=settings.min_backoff_ms,
                max_backoff=settings.max_backoff_ms,
            ),
            CurrentMessage(),
            # A tick older than this is dropped: the next one comes within a minute
            # and dispatch never depends on a late tick.
            PeriodiqMiddleware(skip_delay=30),
            # Group-wide SIGTERM reaches a worker twice; the second must not kill it.
            OneStopRequest(),
            # (The runner's lifecycle goes here in a worker: `tasks.lifecycle.install`.)
            # Who each worker process is (host:pid) and what it does, for the Queues page.
            WorkerBeacon(),
        ],
    )
    if settings.prometheus_multiproc_dir:
        broker.add_middleware(prometheus_middleware(settings.prometheus_multiproc_dir))
    return broker


def prometheus_middleware(folder: str) -> dramatiq.Middleware:
    """Dramatiq's Prometheus middleware, for a process `stepwise metered` started.

    It counts every message (`dramatiq_*` metrics), and one process of the group serves
    the group's multiprocess files, ours included, on the port `stepwise metered` gave
    it. Dramatiq reads its folder when the module is imported and points prometheus-client
    at it at boot: both must be the folder the group was given.
    """
    from dramatiq.middleware import prometheus

    if Path(prometheus.DB_PATH).resolve() != Path(folder).resolve():
        raise ConfigError(
            f"PROMETHEUS_MULTIPROC_DIR={folder} but Dramatiq writes its metrics to "
            f"{prometheus.DB_PATH}: start the process with `stepwise metered ROLE -- ...`"
        )
    return prometheus.Prometheus()


def setup_broker() -> RedisBroker:
    """The process's broker, built from settings on first call and set as Dramatiq's global."""
    global _broker
    if _broker is None:
        _broker = build_broker(get_settings())
        # No actor names the urgent queue: `run_execution` messages are sent to it.
        _broker.declare_queue(URGENT_QUEUE)
        dramatiq.set_broker(_broker)
    return _broker


def enqueue_many(
    broker: RedisBroker, messages: Iterable[tuple[Message[Any], int | None]], *, chunk: int = 1000
) -> int:
    """`broker.enqueue(message, delay=delay)` for each pair, in one Redis round trip per chunk.

    Each message is copied, announced to the middleware and stored by the broker's
    own `enqueue` script exactly as `RedisBroker.enqueue` does it (same Redis
    message id option, same delay queue and `eta`, same script arguments); only the
    round trips are shared, through a pipeline. Returns how many were enqueued.
    """
    script = broker.scripts["dispatch"]
    count = 0
    pending: list[tuple[Message[Any], int | None]] = []
    for message, delay in messages:
        pending.append((message, delay))
        if len(pending) >= chunk:
            count += _enqueue_chunk(broker, script, pending)
            pending = []
    if pending:
        count += _enqueue_chunk(broker, script, pending)
    return count


def _enqueue_chunk(
    broker: RedisBroker, script: Any, pending: list[tuple[Message[Any], int | None]]
) -> int:
    pipe = broker.client.pipeline(transaction=False)
    # Only the middleware that act on enqueues are called, in Dramatiq's order and with
    # its error handling (the rest inherit its no-op hooks): at 100,000 messages the
    # no-op calls alone took over a second (bench/RESULTS.md, "Dispatch at scale").
    before, after = _hooked(broker, "before_enqueue"), _hooked(broker, "after_enqueue")
    sent = []
    for original, delay in pending:
        queue_name = original.queue_name
        options: dict[str, Any] = {"redis_message_id": str(uuid4())}
        if delay is not None:
            queue_name = dq_name(queue_name)
            options["eta"] = current_millis() + delay
        # One copy where `RedisBroker.enqueue` makes two: the same message.
        message = original.copy(queue_name=queue_name, options=options)
        _emit(broker, before, "before_enqueue", message, delay)
        args = [
            "enqueue",
            current_millis(),
            queue_name,
            broker.broker_id,
            broker.heartbeat_timeout,
            broker.dead_message_ttl,
            broker._should_do_maintenance("enqueue"),
            broker._max_unpack_size(),  # type: ignore[no-untyped-call]
            message.options["redis_message_id"],
            message.encode(),
        ]
        script(keys=[broker.namespace], args=args, client=pipe)
        sent.append((message, delay))
    pipe.execute()
    for message, delay in sent:
        _emit(broker, after[::-1], "after_enqueue", message, delay)
    return len(sent)


def ack_many(broker: RedisBroker, queue_name: str, messages: Sequence[MessageProxy]) -> None:
    """Acknowledge `messages`, fetched from `queue_name`, in one Redis round trip: each
    by the broker's own `ack` script, as `_RedisConsumer.ack` does, with the middleware
    that act on acks announced around it."""
    script = broker.scripts["dispatch"]
    before, after = _hooked(broker, "before_ack"), _hooked(broker, "after_ack")
    pipe = broker.client.pipeline(transaction=False)
    for message in messages:
        _emit(broker, before, "before_ack", message)
        args = [
            "ack",
            current_millis(),
            queue_name,
            broker.broker_id,
            broker.heartbeat_timeout,
            broker.dead_message_ttl,
            broker._should_do_maintenance("ack"),
            broker._max_unpack_size(),  # type: ignore[no-untyped-call]
            message.options["redis_message_id"],
        ]
        script(keys=[broker.namespace], args=args, client=pipe)
    pipe.execute()
    for message in messages:
        _emit(broker, after[::-1], "after_ack", message)


def hop_due_messages(thread: ConsumerThread) -> None:
    """A delay queue's consumer thread: move every message whose eta has passed to its
    queue, up to HOP_CHUNK in one Redis round trip, then acknowledge them in another.

    Stands in for Dramatiq's `ConsumerThread.handle_delayed_messages` (`hop_in_batches`),
    which does the same one message at a time: an enqueue and an ack, two round trips,
    each waiting for the GIL behind the process's busy threads when it comes back (up
    to the 5 ms switch interval). When 10,000 slots came due at once, that moved about
    65 messages a second per worker process, and the workers' threads sat idle behind it
    (bench/RESULTS.md, "The delay queue's hop"). Same order as Dramatiq's: enqueued
    first, acknowledged after, so a crash in between can only send a message twice
    (the claim in Postgres lets one run it), never lose it.
    """
    now = current_millis()
    due = []
    for item in iter_queue(thread.delay_queue):  # type: ignore[no-untyped-call]
        if item.priority > now:
            thread.delay_queue.put(item)
            thread.delay_queue.task_done()
            break
        due.append(item)
    for start in range(0, len(due), HOP_CHUNK):
        chunk = [item.message for item in due[start : start + HOP_CHUNK]]
        moved = []
        for message in chunk:
            new_message = message.copy(queue_name=q_name(message.queue_name))
            del new_message.options["eta"]
            moved.append((new_message, None))
        try:
            enqueue_many(thread.broker, moved, chunk=HOP_CHUNK)  # type: ignore[arg-type]
        except BaseException:
            # Redis went away: what is not moved yet stays held, for the next try.
            for item in due[start:]:
                thread.delay_queue.put(item)
                thread.delay_queue.task_done()
            raise
        _ack_retrying(thread, chunk)
        for _ in chunk:
            thread.delay_queue.task_done()


def _ack_retrying(thread: ConsumerThread, messages: list[MessageProxy]) -> None:
    """`ack_many`, retried until Redis answers, as Dramatiq retries an ack."""
    assert thread.consumer is not None
    while True:
        try:
            ack_many(thread.broker, thread.queue_name, messages)  # type: ignore[arg-type]
            break
        except redis.ConnectionError as exc:
            thread.logger.warning(
                "Could not acknowledge %d delayed messages (%s); retrying in %s s.",
                len(messages),
                exc,
                POST_PROCESS_MESSAGE_RETRY_DELAY_SECS,
            )
            time.sleep(POST_PROCESS_MESSAGE_RETRY_DELAY_SECS)
    queued = thread.consumer.queued_message_ids  # type: ignore[attr-defined]
    for message in messages:
        queued.discard(message.message_id)


def hop_in_batches() -> None:
    """Make every delay-queue consumer of this process move its due messages in batches
    (`hop_due_messages`). Dramatiq builds its consumer threads itself and offers no hook
    for this, so the method is replaced on its class, once, in a worker process
    (`tasks.lifecycle.install`); dramatiq is pinned, and tests/test_dispatch.py fails when it
    is not the version this was written against (HOP_WRITTEN_FOR)."""
    ConsumerThread.handle_delayed_messages = hop_due_messages  # type: ignore[method-assign,assignment]


def _hooked(broker: RedisBroker, hook: str) -> list[dramatiq.Middleware]:
    """The broker's middleware whose `hook` does something, in the broker's order."""
    noop = getattr(dramatiq.Middleware, hook)
    return [m for m in broker.middleware if getattr(type(m), hook) is not noop]


def _emit(
    broker: RedisBroker, middleware: list[dramatiq.Middleware], hook: str, *args: Any
) -> None:
    """`broker.emit_before`/`emit_after` over `middleware` only, with Dramatiq's handling:
    a MiddlewareError before an enqueue stops it, any other error is logged."""
    for each in middleware:
        try:
            getattr(each, hook)(broker, *args)
        except Exception as exc:
            if isinstance(exc, MiddlewareError) and hook.startswith("before_"):
                raise
            broker.logger.critical("Unexpected failure in %s of %r.", hook, each, exc_info=True)
