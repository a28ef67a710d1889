"""Worker beacons: each worker process says who it is and what it does, for the Queues page.

Dramatiq's Redis broker records only a random id per worker in `__heartbeats__`,
which tells a person nothing. `WorkerBeacon` (a middleware on every worker)
writes one small Redis hash per process, `stepwise:worker:<host>:<pid>`, every
few seconds with a TTL, so a killed process disappears by itself: its host and
pid, the queues it consumes, the runs its runner holds now (asked through a
callable the runner's lifecycle registers, so this module knows no runner), and how
many messages it processed and how many of them failed. An index zset scored by the
last beacon lets a reader list live workers without scanning Redis keys.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dramatiq

log = logging.getLogger(__name__)

INDEX = "stepwise:workers"  # zset: "<host>:<pid>" -> last beacon, ms since the epoch
KEY = "stepwise:worker:{name}"  # hash of one worker process
BEACON_S = 5.0
TTL_S = 30  # a process silent this long is gone from the page
SHOWN_RUNS = 5  # ids of runs in flight kept in the beacon (the count is exact)


# The ids of the runs this process's runner holds now: none until a runner's lifecycle
# says where to ask (`report_runs_with`).
_runs_in_flight: Callable[[], list[str]] = list


def report_runs_with(runs_in_flight: Callable[[], list[str]]) -> None:
    """Have every beacon of this process show the runs `runs_in_flight()` returns."""
    global _runs_in_flight
    _runs_in_flight = runs_in_flight


class WorkerBeacon(dramatiq.Middleware):
    """Counts the messages this process handles and publishes a beacon every BEACON_S."""

    def __init__(self) -> None:
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.processed = 0
        self.failed = 0
        self.started = time.time()
        self.queues: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # A forked worker process builds its broker anew; its pid is its own.
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.started = time.time()
        with self._lock:
            self.processed = self.failed = 0
        whitelist = getattr(worker, "consumer_whitelist", None)
        self.queues = sorted(whitelist or broker.get_declared_queues())
        self._client = getattr(broker, "client", None)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="worker-beacon", daemon=True)
        self._thread.start()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        with self._lock:
            self.processed += 1
            self.failed += exception is not None

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        if self._client is not None:
            try:
                self._client.pipeline().zrem(INDEX, self.name).delete(self._key()).execute()
            except Exception:  # Redis away at the stop: the TTL removes the beacon
                log.debug("worker beacon not removed", exc_info=True)

    def _key(self) -> str:
        return KEY.format(name=self.name)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.publish()
            except Exception:  # Redis away: the next beacon tries again
                log.debug("worker beacon not published", exc_info=True)
            self._stop.wait(BEACON_S)

    def publish(self) -> None:
        """Write this process's beacon now (the loop does, every BEACON_S)."""
        if self._client is None:
            return
        now_ms = int(time.time() * 1000)
        held = _runs_in_flight()
        with self._lock:
            fields = {
                "host": self.name.rpartition(":")[0],
                "pid": self.name.rpartition(":")[2],
                "queues": ",".join(self.queues),
                "running": len(held),
                "runs": ",".join(held[:SHOWN_RUNS]),
                "processed": self.processed,
                "failed": self.failed,
                "started": int(self.started * 1000),
                "beacon": now_ms,
            }
        pipe = self._client.pipeline()
        pipe.hset(self._key(), mapping=fields)
        pipe.expire(self._key(), TTL_S)
        pipe.zadd(INDEX, {self.name: now_ms})
        pipe.zremrangebyscore(INDEX, "-inf", now_ms - TTL_S * 1000)
        pipe.execute()


@dataclass(frozen=True)
class WorkerInfo:
    name: str  # host:pid
    host: str
    pid: int
    queues: tuple[str, ...]
    running: int
    runs: tuple[str, ...]  # up to SHOWN_RUNS of the runs in flight
    processed: int
    failed: int
    started: datetime
    last_beacon: datetime


def live_workers(client: Any) -> list[WorkerInfo]:
    """Every worker process with a beacon newer than TTL_S, by host and pid."""
    since = int(time.time() * 1000) - TTL_S * 1000
    names = [_text(n) for n in client.zrangebyscore(INDEX, since, "+inf")]
    if not names:
        return []
    pipe = client.pipeline()
    for name in names:
        pipe.hgetall(KEY.format(name=name))
    found = [_info(name, raw) for name, raw in zip(names, pipe.execute(), strict=True) if raw]
    return sorted(found, key=lambda w: (w.host, w.pid))


def _info(name: str, raw: dict[Any, Any]) -> WorkerInfo:
    h = {_text(k): _text(v) for k, v in raw.items()}
    return WorkerInfo(
        name=name,
        host=h.get("host", ""),
        pid=int(h.get("pid") or 0),
        queues=tuple(q for q in h.get("queues", "").split(",") if q),
        running=int(h.get("running") or 0),
        runs=tuple(r for r in h.get("runs", "").split(",") if r),
        processed=int(h.get("processed") or 0),
        failed=int(h.get("failed") or 0),
        started=_from_ms(h.get("started")),
        last_beacon=_from_ms(h.get("beacon")),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _from_ms(value: str | None) -> datetime:
    return datetime.fromtimestamp(int(value or 0) / 1000, tz=UTC)
