"""Stopping a worker well: runs hand back between steps, and one SIGTERM counts once.

A worker process that begins a graceful stop sets `shutting_down`; a run checks it
between steps and hands itself on without spending a retry (`tasks/flight.py`).

One stop request counts once, however many copies of SIGTERM a worker receives.

honcho (`stepwise run`) and Heroku send SIGTERM to every process of the group,
and dramatiq's main process forwards the signal to its worker children as well:
each child gets it twice within milliseconds. dramatiq reads a second SIGTERM as
"kill now" and exits mid-step, abandoning the step in flight to the lease expiry
(tests/test_faults_workers.py caught it about every other run). Copies arriving
within a short window are the same request and are ignored; a later SIGTERM
still kills a stuck worker, as dramatiq intends.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

import dramatiq

log = logging.getLogger(__name__)
REPEAT_WINDOW_S = 3.0

# Set when this worker process begins a graceful stop: runs hand back between steps.
shutting_down = threading.Event()


def absorb_repeated_sigterm(window_s: float = REPEAT_WINDOW_S) -> bool:
    """Wrap the process's SIGTERM handler so repeats within `window_s` are ignored."""
    if threading.current_thread() is not threading.main_thread():
        return False  # only the main thread may set handlers (e.g. an in-process test worker)
    original = signal.getsignal(signal.SIGTERM)
    if not callable(original):
        return False  # default or ignored: nothing of dramatiq's to protect
    first: float | None = None

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal first
        now = time.monotonic()
        if first is not None and now - first < window_s:
            log.info("ignoring a repeated SIGTERM: the graceful stop is under way")
            return
        first = first or now
        original(signum, frame)

    signal.signal(signal.SIGTERM, handler)
    return True


class OneStopRequest(dramatiq.Middleware):
    """Installs `absorb_repeated_sigterm` in each worker process once it has booted."""

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        absorb_repeated_sigterm()
