"""The broker is composed by a function: Stepwise's middleware, from settings, nothing global."""

from __future__ import annotations

import dramatiq.broker
import pytest
from dramatiq.middleware import Retries, TimeLimit
from periodiq import PeriodiqMiddleware

from core.errors import ConfigError
from core.settings import Settings
from tasks.broker import HEARTBEAT_TIMEOUT_MS, build_broker
from tasks.lifecycle import RunnerLifecycle, install
from tasks.signals import OneStopRequest


def _settings(**values: object) -> Settings:
    return Settings.model_validate({"REDIS_URL": "redis://127.0.0.1:1/0", **values})


def test_the_broker_carries_our_retry_time_limit_and_stop_middleware() -> None:
    # given settings with their own backoff and time limit
    settings = _settings(min_backoff_ms=123, max_backoff_ms=4567, execution_time_limit_s=42)
    # when the broker is built for a worker (no connection is made: nothing listens on port 1)
    broker = build_broker(settings)
    install(broker)
    # then Dramatiq's defaults (20 retries over a week, 10 minutes) are replaced
    kinds = {type(m): m for m in broker.middleware}
    retries = kinds[Retries]
    assert (retries.max_retries, retries.min_backoff, retries.max_backoff) == (0, 123, 4567)
    assert kinds[TimeLimit].time_limit == 42_000
    # and the periodic tick, the one-SIGTERM rule and the runner's lifecycle are in place
    assert {PeriodiqMiddleware, OneStopRequest, RunnerLifecycle} <= kinds.keys()
    # and a killed worker's prefetched messages come back after 20 s, not a minute
    assert broker.heartbeat_timeout == HEARTBEAT_TIMEOUT_MS == 20_000


def test_building_a_broker_touches_no_global() -> None:
    before = dramatiq.broker.global_broker  # read, not get_broker(): that would set one
    built = build_broker(_settings())
    assert dramatiq.broker.global_broker is before
    assert built is not before


def test_a_broker_without_redis_url_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL"):
        build_broker(Settings.model_validate({"REDIS_URL": ""}))
