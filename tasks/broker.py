"""The Dramatiq broker, built from settings before any actor is declared.

Dramatiq's defaults are wrong for us (20 retries over a week, a 10-minute time
limit): every middleware is configured here, explicitly. Periodiq's middleware
must be present in every process that declares the periodic actors.
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

from stepwise.settings import Settings, get_settings
from tasks.signals import OneStopRequest

DISPATCH_QUEUE = "dispatch"
RUN_QUEUE = "default"


def build_broker(settings: Settings) -> RedisBroker:
    settings.require_servers()
    return RedisBroker(  # type: ignore[no-untyped-call]
        url=settings.redis_url,
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
        ],
    )


broker = build_broker(get_settings())
dramatiq.set_broker(broker)
