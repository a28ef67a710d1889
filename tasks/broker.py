"""The Dramatiq broker, built by a function with every middleware composed in one place.

Dramatiq's defaults are wrong for us (20 retries over a week, a 10-minute time
limit): each middleware is configured here, explicitly. Periodiq's middleware
must be present in every process that declares the periodic actors. Importing
this module builds nothing: `setup_broker()` does, once per process, before the
actors are declared (`dramatiq tasks.broker:setup_broker tasks.actors`).
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)
from periodiq import PeriodiqMiddleware

from core.settings import Settings, get_settings
from tasks.runner import RUN_QUEUE, RunnerLifecycle
from tasks.signals import OneStopRequest

DISPATCH_QUEUE = "dispatch"
QUEUES = (RUN_QUEUE, DISPATCH_QUEUE)
__all__ = ["DISPATCH_QUEUE", "QUEUES", "RUN_QUEUE", "build_broker", "setup_broker"]

HEARTBEAT_TIMEOUT_MS = 20_000
MAINTENANCE_CHANCE = 100_000  # per million commands

_broker: RedisBroker | None = None


def build_broker(settings: Settings) -> RedisBroker:
    """A Redis broker with Stepwise's middleware; nothing global is touched."""
    settings.require_redis()
    return RedisBroker(  # type: ignore[no-untyped-call]
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
            # The run queue's consumers start their runner at boot; at a stop, runs
            # hand back between steps and the calls in flight end first.
            RunnerLifecycle(),
        ],
    )


def setup_broker() -> RedisBroker:
    """The process's broker, built from settings on first call and set as Dramatiq's global."""
    global _broker
    if _broker is None:
        _broker = build_broker(get_settings())
        dramatiq.set_broker(_broker)
    return _broker
