"""What the API's metrics read when they are scraped: whether PostgreSQL and Redis answer,
how old the scheduler's heartbeats are, queue depths, dead letters and live workers.

Read at scrape time (every 15 s or so, by one process), never on a run's path. Each
server is asked within `timeout_s` on a thread of its own: a server that hangs makes
its gauges say "down" instead of holding the scrape past Prometheus's own timeout.
"""

from __future__ import annotations

import concurrent.futures
import logging
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import text

from db.figures import heartbeat_ages
from db.session import session_scope
from tasks import queues
from tasks.broker import QUEUES

log = logging.getLogger(__name__)
T = TypeVar("T")
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="gauges")


@dataclass(frozen=True)
class Gauges:
    database_up: bool = False
    redis_up: bool = False
    # Tick name (dispatch, housekeeping, notify) -> seconds since it last ran.
    heartbeat_ages: dict[str, float] = field(default_factory=dict)
    queues: list[queues.QueueStats] = field(default_factory=list)
    # Queue -> live worker processes consuming it (their beacons, `tasks.workers`).
    workers: dict[str, int] = field(default_factory=dict)


def read_gauges(*, timeout_s: float = 3.0) -> Gauges:
    """Ask PostgreSQL and Redis at once, each within `timeout_s`."""
    database = _POOL.submit(_database, timeout_s)
    redis = _POOL.submit(_redis)
    ages = _within(database, timeout_s, "PostgreSQL")
    found = _within(redis, timeout_s, "Redis")
    stats, workers = found if found is not None else ([], {})
    return Gauges(
        database_up=ages is not None,
        redis_up=found is not None,
        heartbeat_ages=ages or {},
        queues=stats,
        workers=workers,
    )


def _within(future: concurrent.futures.Future[T], timeout_s: float, server: str) -> T | None:
    try:
        return future.result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        log.warning("metrics: %s did not answer within %g s", server, timeout_s)
    except Exception as exc:
        log.warning("metrics: %s did not answer: %s", server, exc)
    return None


def _database(timeout_s: float) -> dict[str, float]:
    with session_scope() as session:
        session.execute(text(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}"))
        return heartbeat_ages(session)


def _redis() -> tuple[list[queues.QueueStats], dict[str, int]]:
    stats = queues.all_queue_stats()
    workers = dict.fromkeys(QUEUES, 0)
    for worker in queues.worker_processes():
        for queue in worker.queues:
            workers[queue] = workers.get(queue, 0) + 1
    return stats, workers
