"""The API process's Prometheus metrics: requests by route and status, and what the
deployment looks like at scrape time (PostgreSQL and Redis up, heartbeat ages, queues).

They are served on their own listener, STEPWISE_METRICS_ADDRESS (127.0.0.1 unless told)
and STEPWISE_API_METRICS_PORT, never on the API's port: the API may face the internet
with its tokens, the metrics are for the machine's Prometheus. Requests are counted by
route template (`/v1/executions/{execution_id}`), never by raw path, so ids and probes
of unknown paths cannot grow the number of series.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import compile_path

from core.settings import Settings
from service.gauges import read_gauges

log = logging.getLogger(__name__)
# `_created` series would double every counter, for little use.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry()
UNMATCHED = "<unmatched>"  # any path no route answers (404s of probes, typos)
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

REQUESTS = Counter(
    "stepwise_api_requests",
    "API requests answered, by route template, method and HTTP status.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "stepwise_api_request_duration_seconds",
    "How long the API took to answer, by route template and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)


class RequestMetrics:
    """ASGI middleware counting each HTTP request by its route's template and status."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the answer began

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = _template(scope)
            method = scope["method"] if scope["method"] in METHODS else "other"
            REQUESTS.labels(route, method, str(status)).inc()
            REQUEST_SECONDS.labels(route, method).observe(time.perf_counter() - started)


def _template(scope: Any) -> str:
    """The template of the route a request reached, or would have reached: a request the
    gate refused (no token, a body too large) never got to the router, so its path is
    matched against the schema's templates here. A mount (the docs' assets) moves the root
    path."""
    route = getattr(scope.get("route"), "path", None)
    if route:
        return str(route)
    app = scope.get("app")
    if app is not None and scope.get("path"):
        for pattern, template in _templates(app):
            if pattern.match(scope["path"]):
                return template
    return str(scope.get("root_path") or UNMATCHED)


@functools.cache
def _templates(app: Any) -> list[tuple[re.Pattern[str], str]]:
    """The app's path templates (its OpenAPI schema's), each with the pattern it matches."""
    return [(compile_path(template)[0], template) for template in app.openapi()["paths"]]


class DeploymentGauges(Collector):
    """Gauges read from PostgreSQL and Redis each time Prometheus scrapes this process."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        found = read_gauges()
        yield _gauge(
            "stepwise_database_up",
            "1 if PostgreSQL answered this scrape's query in time, else 0.",
            found.database_up,
        )
        yield _gauge(
            "stepwise_redis_up", "1 if Redis answered this scrape in time, else 0.", found.redis_up
        )
        ages = GaugeMetricFamily(
            "stepwise_scheduler_heartbeat_age_seconds",
            "Seconds since each periodic tick last completed (dispatch, housekeeping, "
            "notify), on PostgreSQL's clock.",
            labels=["tick"],
        )
        for tick, age in sorted(found.heartbeat_ages.items()):
            ages.add_metric([tick], age)
        yield ages
        depth = GaugeMetricFamily(
            "stepwise_queue_messages",
            "Messages in each Dramatiq queue: queued (waiting for a worker), in_flight "
            "(taken, not yet acknowledged), delayed (waiting for their time).",
            labels=["queue", "state"],
        )
        dead = GaugeMetricFamily(
            "stepwise_dead_letters", "Dead-lettered messages kept in each queue.", labels=["queue"]
        )
        for stats in found.queues:
            depth.add_metric([stats.queue, "queued"], stats.queued)
            depth.add_metric([stats.queue, "in_flight"], stats.in_flight)
            depth.add_metric([stats.queue, "delayed"], stats.delayed)
            dead.add_metric([stats.queue], stats.dead)
        yield depth
        yield dead
        workers = GaugeMetricFamily(
            "stepwise_worker_processes",
            "Live worker processes consuming each queue (their beacons in Redis, any host).",
            labels=["queue"],
        )
        for queue, count in sorted(found.workers.items()):
            workers.add_metric([queue], count)
        yield workers

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # nothing read at registration: the servers may not be up yet


def _gauge(name: str, documentation: str, value: bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=1.0 if value else 0.0)


REGISTRY.register(DeploymentGauges())


def serve(settings: Settings) -> bool:
    """Serve the metrics on their own listener; False (and an error logged) if it cannot
    bind: the API goes on answering without them."""
    address, port = settings.metrics_address, settings.api_metrics_port
    try:
        start_http_server(port, addr=address, registry=REGISTRY)
    except OSError as exc:
        log.error("metrics not served on %s:%d (STEPWISE_API_METRICS_PORT): %s", address, port, exc)
        return False
    log.info("metrics at http://%s:%d/metrics", address, port)
    return True
