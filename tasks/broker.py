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

from collections.abc import Iterable
from pathlib import Path
from typing import Any
from uuid import uuid4

import dramatiq
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name
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
