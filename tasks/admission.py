"""Admission: how a run message in a Dramatiq thread gets one of the runner's slots.

A Dramatiq thread waits for a free slot before it claims, so the queue, not this
process's memory, holds the runs it cannot take yet. An urgent automation's run may
take a slot of a small reserve when the runner is full. A message that came early
for a run that needs an overlap decision waits, unacknowledged, for its slot, while
few enough threads wait already; otherwise it goes back to the queue for its time.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace
from typing import Protocol

from core.settings import Settings
from core.vocabulary import Admission, ExecutionStatus
from db.runs import RunMessage
from tasks import metrics
from tasks.send import Send
from tasks.signals import shutting_down

URGENT_RESERVE = 0.1  # of STEPWISE_WORKER_IN_FLIGHT


class Start(Protocol):
    """Claim a run and start it on the runner's loop (`Runner.admit`)."""

    def __call__(
        self,
        execution_id: uuid.UUID,
        *,
        retries: int,
        max_retries: int,
        start_at_ms: int | None,
        slot: threading.Semaphore | None,
    ) -> Admission: ...


class Gate:
    """A runner's way in for Dramatiq's threads: its slots, the urgent reserve, and the
    threads allowed to wait for an early message."""

    def __init__(self, settings: Settings, *, start: Start) -> None:
        self.slots = threading.BoundedSemaphore(settings.worker_in_flight)
        self.reserve = threading.BoundedSemaphore(
            max(1, int(settings.worker_in_flight * URGENT_RESERVE))
        )
        # Dramatiq threads waiting for an early message's slot (`accept`).
        self.waiting = threading.BoundedSemaphore(max(1, settings.worker_threads // 2))
        self.start = start

    def take_slot(self, *, urgent: bool = False) -> threading.Semaphore | None:
        """Wait for room for one more run (an urgent one may use the reserve when the
        runner is full); the slot taken, or None if the worker began to stop meanwhile."""
        while not shutting_down.is_set():
            if self.slots.acquire(timeout=0.05 if urgent else 0.5):
                return self.slots
            if urgent and self.reserve.acquire(blocking=False):
                return self.reserve
        return None

    def wait_for(self, start_at_ms: int) -> bool:
        """Wait until `start_at_ms` (epoch ms); False if too many threads wait already
        or the worker began to stop."""
        wait_s = start_at_ms / 1000 - time.time()
        if wait_s <= 0:
            return True
        if not self.waiting.acquire(blocking=False):
            return False
        try:
            return not shutting_down.wait(wait_s)
        finally:
            self.waiting.release()

    def accept(
        self,
        execution_id: uuid.UUID,
        *,
        retries: int,
        max_retries: int,
        send: Send,
        start_at_ms: int | None = None,
        urgent: bool = False,
    ) -> Admission:
        """Handle a run message: claim the run and hand it to the runner; returns what
        happened.

        Runs in a Dramatiq thread until the claim has committed (claims of concurrent
        messages share one transaction), so the message is acknowledged only once the
        run is this worker's in Postgres.

        A slot's message arrives up to `START_AHEAD_MS` early (`start_at_ms`): its run
        is claimed at once and its first call waits on the loop for the slot (a killed
        worker's lease expires as for any run). A run whose start depends on its
        schedule's other runs (an overlap policy) is claimed at the slot instead: the
        thread waits for it, unacknowledged, or, when half the threads wait already,
        sends the message back to the queue for its time.
        """
        message = RunMessage.hand_back(
            execution_id, max_retries=max_retries, retries=retries, urgent=urgent
        )
        outcome = self._admit(message, send, start_at_ms)
        if outcome == Admission.EARLY:
            assert start_at_ms is not None
            if not self.wait_for(start_at_ms):
                late_ms = max(0, start_at_ms - int(time.time() * 1000))
                send(replace(message, delay_ms=late_ms))
                return Admission.HANDED_BACK
            outcome = self._admit(message, send, None)
        return outcome

    def _admit(self, message: RunMessage, send: Send, start_at_ms: int | None) -> Admission:
        slot = self.take_slot(urgent=message.urgent)
        if slot is None:
            send(message)  # stopping: hand the message on at once, without spending a retry
            return Admission.HANDED_BACK
        try:
            outcome = self.start(
                message.execution_id,
                retries=message.retries,
                max_retries=message.max_retries,
                start_at_ms=start_at_ms,
                slot=slot,
            )
        except BaseException:
            slot.release()
            raise
        if outcome != Admission.STARTED:
            slot.release()
            if outcome == Admission.SKIPPED:
                metrics.run_ended(ExecutionStatus.SKIPPED)
        return outcome
