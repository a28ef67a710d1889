"""The runner: a worker process's event loop, holding every run it has in flight.

Dramatiq stays the queue. A `run_execution` message takes a Dramatiq thread for a
few milliseconds: it claims the run in Postgres and hands the claim to this
process's `Runner`, whose event loop calls the agent step after step with one
pooled aiohttp session (`tasks/agent.py`). A waiting agent costs a coroutine, not a
thread, so a process holds `STEPWISE_WORKER_IN_FLIGHT` runs on a handful of
threads; Dramatiq's async actors would block a thread per message until the
coroutine ends (`dramatiq/asyncio.py`), which is the limit this removes.

What Dramatiq did for a blocking actor is done explicitly, each in its module:
slots and backpressure (`tasks/admission.py`); retries, dead letters and the
hand-back at a graceful stop (`tasks/flight.py`; a graph's steps side by side:
`tasks/graphrun.py`); leases (`tasks/leases.py`); the
worker's boot and stop (`tasks/lifecycle.py`). Claims and step writes of all runs
in flight are committed in groups on a small pool of threads (`tasks/commits.py`):
the loop never blocks on Postgres.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

from core.graph import is_graph
from core.settings import Settings
from core.vocabulary import Admission
from tasks import tracing
from tasks.admission import Gate
from tasks.agent import AgentClient
from tasks.commits import GroupCommits
from tasks.flight import Flight, Pilot
from tasks.flow import FlowControl
from tasks.graphrun import GraphPilot
from tasks.leases import Leases
from tasks.send import Send


class Runner:
    """The process's event loop, its agent client and the runs it holds."""

    def __init__(self, settings: Settings, send: Send):
        self.settings = settings
        self.gate = Gate(settings, start=self.admit)
        self.flights: dict[uuid.UUID, Flight] = {}  # touched on the loop's thread only
        self.held = 0  # runs handed over and not ended, under `self.counting`
        self.counting = threading.Lock()
        self.idle = threading.Event()
        self.idle.set()
        self.commits = GroupCommits(threads=settings.worker_db_threads, lease_s=settings.lease_s)
        self.leases = Leases(
            lease_s=settings.lease_s, commits=self.commits, flights=self.flights, send=send
        )
        self.loop = asyncio.new_event_loop()
        self.flow = FlowControl(settings.redis_url)
        self.tracing = tracing.start(settings.otel_exporter_otlp_endpoint)  # None: off
        self.thread = threading.Thread(target=self._main, name="stepwise-runner", daemon=True)
        self.thread.start()
        # Made on the loop that uses it (an aiohttp session belongs to one loop).
        self.client = asyncio.run_coroutine_threadsafe(self._client(), self.loop).result(10)
        flying: dict[str, Any] = {
            "settings": settings,
            "send": send,
            "commits": self.commits,
            "flow": self.flow,
            "client": self.client,
            "lease_until": lambda: self.leases.until,
            "tracing": self.tracing,
        }
        self.pilot = Pilot(**flying)  # chains: today's linear automations
        self.graphs = GraphPilot(**flying)  # graphs: steps with keys (tasks/graphrun.py)

    # --- called from Dramatiq's threads ------------------------------------------

    def admit(
        self,
        execution_id: uuid.UUID,
        *,
        retries: int,
        max_retries: int,
        start_at_ms: int | None = None,
        slot: threading.Semaphore | None = None,
    ) -> Admission:
        """Claim a run (in a batch with the other Dramatiq threads' claims) and start it
        on the loop, at `start_at_ms` when that is still ahead; returns what happened.
        Blocks the calling thread for the claim only, so the message is acknowledged
        once the run is ours in Postgres."""
        start_at = None if start_at_ms is None else start_at_ms / 1000
        if start_at is not None and start_at <= time.time():
            start_at = None
        admitted = asyncio.run_coroutine_threadsafe(
            self._admit(execution_id, retries, max_retries, start_at, slot), self.loop
        )
        return admitted.result()

    def drain(self, timeout_s: float) -> bool:
        """Wait until no run is in flight (the worker is stopping); False on timeout."""
        return self.idle.wait(timeout_s)

    def close(self) -> None:
        """Stop the loop and its client (tests rebuild the runner with new settings)."""

        async def shut() -> None:
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:  # the heartbeat, runs, batches being written
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            await self.client.close()
            await self.flow.close()

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.commits.close()
        self.graphs.templates.shutdown(wait=False)
        if self.tracing is not None:
            self.tracing.shutdown()  # sends the spans still batched

    # --- on the loop ----------------------------------------------------------------

    async def _client(self) -> AgentClient:
        # One connection per call in flight at most; idle ones are kept a while.
        policy = self.settings.egress_policy()
        return AgentClient(policy, max_connections=self.settings.worker_in_flight)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.create_task(self.leases.heartbeat())
        self.loop.run_forever()

    async def _admit(
        self,
        execution_id: uuid.UUID,
        retries: int,
        max_retries: int,
        start_at: float | None,
        slot: threading.Semaphore | None,
    ) -> Admission:
        claim = await self.commits.claim(execution_id, ahead=start_at is not None)
        if isinstance(claim, Admission):
            return claim
        await self._begin(Flight(claim, retries, max_retries, start_at=start_at, slot=slot))
        return Admission.STARTED

    async def _begin(self, flight: Flight) -> None:
        with self.counting:
            self.held += 1
            self.idle.clear()
        pilot = self.graphs if is_graph(flight.claim.steps) else self.pilot
        flight.task = asyncio.create_task(pilot.fly(flight))
        self.flights[flight.claim.execution_id] = flight
        flight.task.add_done_callback(lambda _: self._ended(flight))

    def _ended(self, flight: Flight) -> None:
        # Only this flight: a parked run may be woken and claimed here again (the same id)
        # before this callback runs.
        if self.flights.get(flight.claim.execution_id) is flight:
            del self.flights[flight.claim.execution_id]
        if flight.slot is not None:
            flight.slot.release()
        with self.counting:
            self.held -= 1
            if not self.held:
                self.idle.set()
