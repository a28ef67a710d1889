"""A worker process's runner: built once, started at the worker's boot, drained at its stop.

A process that consumes the run queue starts its runner at boot (its heartbeat sweeps
for other workers' expired leases even before a run arrives). At a stop, runs hand
back between steps (`tasks/flight.py`) and the stop waits for the calls in flight.
`install` adds this to the broker of a process that declares the actors
(`tasks/actors.py`), so a process that only sends builds no runner.
"""

from __future__ import annotations

import logging
import os
import threading

import dramatiq

from core.settings import get_settings
from db.session import ping_before_use
from tasks import metrics
from tasks.broker import RUN_QUEUE, URGENT_QUEUE, hop_in_batches
from tasks.runner import Runner
from tasks.send import Send, send_run
from tasks.signals import shutting_down
from tasks.workers import WorkerBeacon, report_runs_with

log = logging.getLogger(__name__)
# How long a stopping worker waits for the agent calls in flight (the Procfile gives
# Dramatiq 30 s to stop its threads).
DRAIN_S = 25.0


class RunnerLifecycle(dramatiq.Middleware):
    """Starts the runner at a run-queue worker's boot; drains and stops it at the stop."""

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        shutting_down.clear()
        ping_before_use(False)  # every write here retries instead
        queues = getattr(worker, "consumer_whitelist", None)  # None: every queue
        if not queues or RUN_QUEUE in queues or URGENT_QUEUE in queues:
            get_runner(send_run)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        shutting_down.set()
        runner = current_runner()
        if runner is not None and not runner.drain(DRAIN_S):
            log.warning("calls still in flight after %g s: their leases will expire", DRAIN_S)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        stop_runner()
        ping_before_use(True)  # the process may go on without a worker (tests)


def install(broker: dramatiq.Broker) -> None:
    """Give a worker's broker the runner's lifecycle, once, and show the runner's runs in
    the worker's beacon (which comes after it, so it stops after the drain)."""
    if not any(isinstance(m, RunnerLifecycle) for m in broker.middleware):
        broker.add_middleware(RunnerLifecycle(), before=WorkerBeacon)
    hop_in_batches()
    report_runs_with(runs_in_flight)


_runner: Runner | None = None
_runner_lock = threading.Lock()
_runner_pid: int | None = None


def get_runner(send: Send) -> Runner:
    """This process's runner, started on first use (after any fork)."""
    global _runner, _runner_pid
    with _runner_lock:
        if _runner is None or _runner_pid != os.getpid():
            _runner = Runner(get_settings(), send)
            _runner_pid = os.getpid()
        return _runner


def current_runner() -> Runner | None:
    return _runner


def stop_runner() -> None:
    """Stop this process's runner; the next run builds one from the settings."""
    global _runner
    with _runner_lock:
        if _runner is not None:
            _runner.close()
        _runner = None


def runs_in_flight() -> list[str]:
    """The runs this process's runner holds now (none in a process without one); the
    beacon asks every few seconds, and the in-flight gauge is set then, off the run's path."""
    held = current_runner()
    ids: list[str] = []
    if held is not None:
        for _ in range(3):  # the loop thread may change the dict while it is copied
            try:
                ids = [str(i) for i in list(held.flights)]
                break
            except RuntimeError:
                continue
    metrics.IN_FLIGHT.set(len(ids))
    return ids
