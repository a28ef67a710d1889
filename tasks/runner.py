"""Running executions: every agent call of a worker process in flight on one event loop.

Dramatiq stays the queue. A `run_execution` message takes a Dramatiq thread for a
few milliseconds: it claims the run in Postgres and hands the claim to this
process's `Runner`, whose event loop calls the agent step after step with one
pooled aiohttp session (`tasks/agent.py`). A waiting agent costs a coroutine, not a thread, so a
process holds `STEPWISE_WORKER_IN_FLIGHT` runs (1,000 by default) on a handful of
threads; Dramatiq's async actors would block a thread per message until the
coroutine ends (`dramatiq/asyncio.py`), which is the limit this removes.

What Dramatiq did for a blocking actor is done here, explicitly:

- **Retries.** A retryable failure releases the run and sends its message again
  with `retries + 1` and the delay of Dramatiq's own `compute_backoff` (or the
  agent's Retry-After), which is what the Retries middleware did with the message.
- **Dead letters.** A run that fails for good sends one last message marked
  `report`; the actor finds the run failed and raises, so Dramatiq dead-letters it
  as before and the Queues page can retry it.
- **Leases.** The runner renews the leases of all its runs in one statement every
  third of `STEPWISE_LEASE_S`. A killed process stops renewing: every other worker
  sweeps for expired leases just as often, so its runs start again about one lease
  after the kill, however many it held and however long their steps' timeouts. A
  run the renewal no longer finds (cancelled, taken over) has its call dropped at
  once. If the database cannot be reached for a whole lease, every call in flight
  is dropped: another worker may take the runs over, and two calls for one step
  must never be alive at once. Each call also has a hard deadline (`tasks/agent.py`).
- **Backpressure.** A Dramatiq thread waits for a free slot before it claims, so
  the queue, not this process's memory, holds the runs it cannot take yet.
- **Graceful stop.** Between steps a run hands itself back without spending a
  retry; the worker's shutdown waits for the calls in flight (`drain`).

Claims and step writes of all runs in flight are committed in groups on a small
pool of threads (`tasks/commits.py`): the loop never blocks on Postgres.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import dramatiq
from dramatiq.common import compute_backoff
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.errors import AgentRejected, StepFailed
from core.outcome import StepOutcome, stored_request
from core.secrets import SecretUnreadable
from core.settings import Settings, get_settings
from core.vocabulary import ExecutionStatus, FailureReport, OverlapPolicy
from db import runs
from db.runs import RunMessage
from db.secrets import resolve_headers
from db.session import ping_before_use, session_scope
from tasks.agent import AgentClient, call_agent
from tasks.commits import RETRY_S, Answer, GroupCommits
from tasks.engine import Send, recover_stranded
from tasks.flow import BUSY, FlowControl
from tasks.signals import shutting_down

log = logging.getLogger("stepwise")
T = TypeVar("T")
RENEW_RETRY_S = 1.0  # after a failed lease renewal
# How long a stopping worker waits for the agent calls in flight (the Procfile gives
# Dramatiq 30 s to stop its threads).
DRAIN_S = 25.0
RUN_QUEUE = "default"  # tasks.broker.RUN_QUEUE (the broker module imports this one)
# Urgent automations' runs: their own queue, so a backlog in RUN_QUEUE does not hold
# them back, and a reserve of runner slots beyond a full runner.
URGENT_QUEUE = "urgent"
URGENT_RESERVE = 0.1  # of STEPWISE_WORKER_IN_FLIGHT
# A run whose first call would wait longer than this for its automation's flow
# control goes back to the queue (no thread, no runner slot, no retry spent).
FLOW_WAIT_S = 2.0
BUSY_POLL_MS = 100  # how often a call waiting on a full concurrency limit asks again


def agent_payload(claim: runs.Claim, step_number: int, previous_output: Any) -> dict[str, Any]:
    step = claim.steps[step_number - 1]
    return {
        "thread_id": str(claim.execution_id),
        "automation_id": str(claim.automation_id),
        "user_id": claim.owner_id,
        "message": step["message"],
        "project_context": claim.project_context,
        "step_number": step_number,
        "total_steps": claim.total_steps,
        "timestamp": datetime.now(UTC).isoformat(),
        "execution_id": str(claim.execution_id),
        "schedule_id": str(claim.schedule_id) if claim.schedule_id else None,
        "scheduled_for": claim.scheduled_for.isoformat(),
        "attempt": claim.attempt,
        "previous_output": previous_output,
        "input": claim.input,
    }


@dataclass
class Flight:
    """One run held by this process."""

    claim: runs.Claim
    retries: int
    max_retries: int
    start_at: float | None = None  # epoch s: claimed ahead, the first call waits for it
    slot: threading.Semaphore | None = None  # the runner slot it holds, released at its end
    task: asyncio.Task[None] | None = None
    calling: bool = False  # a call is at the agent: dropping the run drops the call
    # The automation's headers with secrets filled in: in memory for this run only.
    headers: dict[str, str] | None = field(default=None, repr=False)
    answer: Answer | None = field(default=None, repr=False)


class Runner:
    """The process's event loop, its agent client and the runs it holds."""

    def __init__(self, settings: Settings, send: Send):
        self.settings = settings
        self.send = send
        self.lease_s = settings.lease_s
        self.slots = threading.BoundedSemaphore(settings.worker_in_flight)
        self.reserve = threading.BoundedSemaphore(
            max(1, int(settings.worker_in_flight * URGENT_RESERVE))
        )
        # Dramatiq threads waiting for an early message's slot (`accept`).
        self.waiting = threading.BoundedSemaphore(max(1, settings.worker_threads // 2))
        self.flights: dict[uuid.UUID, Flight] = {}  # touched on the loop's thread only
        self.held = 0  # runs handed over and not ended, under `self.counting`
        self.counting = threading.Lock()
        self.idle = threading.Event()
        self.idle.set()
        self.lease_until = time.monotonic() + self.lease_s
        self.commits = GroupCommits(threads=settings.worker_db_threads, lease_s=self.lease_s)
        self.loop = asyncio.new_event_loop()
        self.flow = FlowControl(settings.redis_url)
        self.thread = threading.Thread(target=self._main, name="stepwise-runner", daemon=True)
        self.thread.start()
        # Made on the loop that uses it (an aiohttp session belongs to one loop).
        self.client = asyncio.run_coroutine_threadsafe(self._client(), self.loop).result(10)

    # --- called from Dramatiq's threads ------------------------------------------

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

    def admit(
        self,
        execution_id: uuid.UUID,
        *,
        retries: int,
        max_retries: int,
        start_at_ms: int | None = None,
        slot: threading.Semaphore | None = None,
    ) -> str:
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

    # --- on the loop ----------------------------------------------------------------

    async def _client(self) -> AgentClient:
        # One connection per call in flight at most; idle ones are kept a while.
        policy = self.settings.egress_policy()
        return AgentClient(policy, max_connections=self.settings.worker_in_flight)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.create_task(self._heartbeat())
        self.loop.run_forever()

    async def _admit(
        self,
        execution_id: uuid.UUID,
        retries: int,
        max_retries: int,
        start_at: float | None,
        slot: threading.Semaphore | None,
    ) -> str:
        claim = await self.commits.claim(execution_id, ahead=start_at is not None)
        if isinstance(claim, str):
            return claim
        await self._begin(Flight(claim, retries, max_retries, start_at=start_at, slot=slot))
        return "started"

    async def _begin(self, flight: Flight) -> None:
        with self.counting:
            self.held += 1
            self.idle.clear()
        flight.task = asyncio.create_task(self._run(flight))
        self.flights[flight.claim.execution_id] = flight
        flight.task.add_done_callback(lambda _: self._ended(flight))

    def _ended(self, flight: Flight) -> None:
        self.flights.pop(flight.claim.execution_id, None)
        if flight.slot is not None:
            flight.slot.release()
        with self.counting:
            self.held -= 1
            if not self.held:
                self.idle.set()

    async def _db(self, work: Callable[[], T]) -> T:
        return await self.commits.run(work)

    async def _send(self, message: RunMessage) -> None:
        await self._db(lambda: self.send(message))

    async def _write(
        self, claim: runs.Claim, answer: Answer | None, work: Callable[[Session], T]
    ) -> T:
        """Store `answer` and do `work` in one transaction, retrying through a database
        outage while this process's leases hold.

        One transaction per step (the previous step's answer, then this step's start)
        halves the database round trips of a run. Without the retry a Postgres restart
        threw away answers already received and the agent was called again for them
        (tests/test_faults_servers.py). Every write is fenced, so a retry after a
        commit whose acknowledgement was lost changes nothing twice.
        """
        while True:
            try:
                return await self.commits.write(claim, answer, work)
            except OperationalError:
                if time.monotonic() + RETRY_S >= self.lease_until:
                    raise  # the lease is ending: recovery will run the step again
                log.warning("database unavailable; retrying to record a step")
                await asyncio.sleep(RETRY_S)

    async def _heartbeat(self) -> None:
        """Renew every lease this process holds, drop what it lost, sweep for strays."""
        every = self.lease_s / 3
        pause = every
        while True:
            await asyncio.sleep(pause)
            held = [(f.claim.execution_id, f.claim.attempt) for f in self.flights.values()]
            began = time.monotonic()
            try:
                kept = await self._db(partial(_renew, held, self.lease_s))
                self.lease_until = began + self.lease_s
                pause = every
            except Exception:
                log.warning("could not renew leases; trying again", exc_info=True)
                kept = None
                pause = min(every, RENEW_RETRY_S)  # the lease is running out: soon
            expired = kept is None and time.monotonic() >= self.lease_until
            flights = list(self.flights.values())
            for flight in lost_flights(flights, held, kept, expired=expired):
                if flight.calling and flight.task is not None:
                    flight.task.cancel()
            try:
                await self._db(lambda: recover_stranded(self.send, leases_only=True))
            except Exception:
                log.warning("could not look for stranded runs", exc_info=True)

    async def _run(self, flight: Flight) -> None:
        claim = flight.claim
        previous_output = claim.previous_output
        answer: Answer | None = None
        try:
            if flight.start_at is not None:  # claimed ahead of its slot
                await asyncio.sleep(max(0.0, flight.start_at - time.time()))
            for step_number in range(claim.first_step, claim.total_steps + 1):
                if shutting_down.is_set():
                    # Hand the run on at once, without spending a retry of its budget.
                    reason = "the worker stopped between steps; resuming elsewhere"
                    if await self._release(answer, claim, reason, 0):
                        await self._send(
                            RunMessage(
                                claim.execution_id,
                                flight.max_retries,
                                flight.retries,
                                urgent=claim.urgent,
                            )
                        )
                    return
                answer = await self._step(flight, step_number, previous_output, answer)
                if answer is None:
                    return  # cancelled, or taken over after our lease ran out
                if not answer.outcome.ok:
                    await self._fail(flight, answer, step_number)
                    return
                previous_output = answer.outcome.output
            await self._end(claim, answer, ExecutionStatus.SUCCEEDED, result=previous_output)
        except asyncio.CancelledError:
            # The lease is lost: the step's answer, if any, is not ours to record.
            log.info("dropped execution %s: its lease was lost", claim.execution_id)
            raise
        except Exception as exc:  # database down past the lease, a bug: never leave it running
            log.exception("execution %s interrupted", claim.execution_id)
            await self._interrupted(flight, answer, exc)

    async def _step(
        self, flight: Flight, step_number: int, previous_output: Any, answered: Answer | None
    ) -> Answer | None:
        """Store the previous answer, start this step, call the agent; None if we lost the run."""
        claim = flight.claim
        key = f"{claim.execution_id}:{step_number}"
        holder = f"{key}:{claim.attempt}"
        if claim.flow_controlled:
            # Only a run that started nothing in this claim can be handed back whole.
            first = step_number == claim.first_step and answered is None
            if not await self._permit(flight, holder, answered, can_defer=first):
                return None  # handed back to the queue until a permit is likely
            answered = None  # stored while waiting (or there was none)
        payload = agent_payload(claim, step_number, previous_output)
        # Stored with the step as written: secret references, never their values.
        shown = {**claim.request_headers, "Idempotency-Key": key}
        request = stored_request(claim.agent_url, shown, payload)
        finished = None if answered is None else (answered.step_run_id, answered.outcome)
        step_run_id = await self._write(
            claim,
            None,
            lambda session: runs.start_step(
                session, claim, step_number, request, lease_s=self.lease_s, finished=finished
            ),
        )
        if step_run_id is None:
            if claim.concurrency_limit is not None:
                await self.flow.release(claim.automation_id, holder)
            return None
        if claim.request_headers and flight.headers is None:
            try:
                flight.headers = await self._db(partial(_resolve_headers, claim))
            except SecretUnreadable as exc:
                # Not worth a retry: the workspace must add the secret first.
                error = f"request headers: {exc}"
                return Answer(step_run_id, StepOutcome.failure(error, 0, retryable=False))
        sealed = claim.signing_secret
        flight.calling = True
        try:
            outcome = await call_agent(
                self.client,
                claim.agent_url,
                payload,
                idempotency_key=key,
                timeout_s=claim.step_timeout_s,
                max_bytes=self.settings.max_response_bytes,
                signing_secret=None if sealed is None else self.settings.secret_box().open(sealed),
                extra_headers=flight.headers,
            )
        finally:
            flight.calling = False
            if claim.concurrency_limit is not None:
                await asyncio.shield(self.flow.release(claim.automation_id, holder))
        return Answer(step_run_id, outcome)

    async def _permit(
        self, flight: Flight, holder: str, answered: Answer | None, *, can_defer: bool
    ) -> bool:
        """Wait for the automation's flow control to admit one more call; False if the
        run was handed back to the queue instead (it would wait long)."""
        claim = flight.claim
        waited_s = 0.0
        while True:
            wait_ms = await self.flow.acquire(
                claim.automation_id,
                holder,
                concurrency=claim.concurrency_limit,
                rate_per_s=claim.rate_limit_per_s,
                hold_s=claim.step_timeout_s + self.lease_s,
            )
            if wait_ms == 0:
                return True
            if answered is not None:  # keep the answer safe while this run waits
                await self._write(claim, answered, lambda session: None)
                answered = None
            pause_s = (BUSY_POLL_MS if wait_ms == BUSY else wait_ms) / 1000
            if can_defer and (waited_s >= FLOW_WAIT_S or pause_s >= FLOW_WAIT_S):
                delay_s = max(pause_s, FLOW_WAIT_S) * (1 + random.random())
                defer = partial(runs.defer, claim=claim, delay_s=delay_s)
                if await self._write(claim, None, defer):
                    message = RunMessage(
                        claim.execution_id,
                        flight.max_retries,
                        retries=flight.retries,
                        delay_ms=int(delay_s * 1000),
                        urgent=claim.urgent,
                    )
                    await self._send(message)
                return False
            pause_s *= 0.5 + random.random()  # spread the waiters out
            await asyncio.sleep(pause_s)
            waited_s += pause_s

    async def _fail(self, flight: Flight, answer: Answer, step_number: int) -> None:
        claim = flight.claim
        outcome = answer.outcome
        error = f"step {step_number}: {outcome.error}"
        if outcome.retryable and flight.retries < flight.max_retries:
            delay_ms = self._backoff_ms(flight.retries)
            if outcome.retry_after_s is not None:
                delay_ms = max(delay_ms, int(outcome.retry_after_s * 1000))
            if await self._release(answer, claim, error, delay_ms / 1000):
                await self._send(
                    RunMessage(
                        claim.execution_id,
                        flight.max_retries,
                        retries=flight.retries + 1,
                        delay_ms=delay_ms,
                        urgent=claim.urgent,
                    )
                )
            return
        if not await self._end(claim, answer, ExecutionStatus.FAILED, error=error):
            return  # cancelled or taken over meanwhile: not this worker's failure to report
        failure = FailureReport.EXHAUSTED if outcome.retryable else FailureReport.REJECTED
        await self._send(
            RunMessage(
                claim.execution_id,
                flight.retries,
                retries=flight.retries,
                report=failure,
                urgent=claim.urgent,
            )
        )

    async def _interrupted(self, flight: Flight, answer: Answer | None, exc: Exception) -> None:
        claim = flight.claim
        error = f"interrupted: {type(exc).__name__}: {exc}"
        delay_ms = self._backoff_ms(flight.retries)
        try:
            released = await self._release(answer, claim, error, delay_ms / 1000)
            if released and flight.retries < flight.max_retries:
                await self._send(
                    RunMessage(
                        claim.execution_id,
                        flight.max_retries,
                        retries=flight.retries + 1,
                        delay_ms=delay_ms,
                        urgent=claim.urgent,
                    )
                )
        except Exception:  # the database may be the reason we are here
            log.exception(
                "could not release execution %s; its lease will expire", claim.execution_id
            )

    def _backoff_ms(self, retries: int) -> int:
        _, delay_ms = compute_backoff(
            retries, factor=self.settings.min_backoff_ms, max_backoff=self.settings.max_backoff_ms
        )
        return int(delay_ms)

    async def _release(
        self, answer: Answer | None, claim: runs.Claim, error: str, delay_s: float
    ) -> bool:
        """Put the run back in the queue (for its retry message, or another worker)."""
        return await self._write(
            claim, answer, lambda session: runs.release_for_retry(session, claim, error, delay_s)
        )

    async def _end(
        self,
        claim: runs.Claim,
        answer: Answer | None,
        status: ExecutionStatus,
        *,
        error: str | None = None,
        result: Any = None,
    ) -> bool:
        """End the run as `status`; False if it was no longer ours (cancelled, taken over)."""
        finished = None if answer is None else (answer.step_run_id, answer.outcome)
        ended = await self._write(
            claim,
            None,
            lambda session: runs.finish_execution(
                session, claim, status, error=error, result=result, finished=finished
            ),
        )
        if claim.schedule_id is not None and claim.overlap_policy not in (
            None,
            OverlapPolicy.ALLOW,
        ):
            # The run held back while this one ran (`buffer_one`, the next catch-up run).
            schedule_id = claim.schedule_id
            waiting = await self._db(lambda: _next_waiting(schedule_id))
            if waiting is not None:
                await self._send(waiting)
        return ended


def lost_flights(
    flights: list[Flight],
    asked: list[tuple[uuid.UUID, int]],
    kept: set[uuid.UUID] | None,
    *,
    expired: bool,
) -> list[Flight]:
    """The runs this process must drop after a renewal: those it asked about and the
    database no longer gave it (cancelled, taken over), or all when the renewal failed
    and the local lease ran out. A run claimed while the renewal ran is not lost."""
    if kept is None:
        return flights if expired else []
    asked_set = set(asked)
    return [
        f
        for f in flights
        if (f.claim.execution_id, f.claim.attempt) in asked_set and f.claim.execution_id not in kept
    ]


def _resolve_headers(claim: runs.Claim) -> dict[str, str]:
    with session_scope() as session:
        return resolve_headers(session, claim.workspace_id, claim.request_headers)


def _renew(held: list[tuple[uuid.UUID, int]], lease_s: int) -> set[uuid.UUID]:
    with session_scope() as session:
        return runs.renew_leases(session, held, lease_s=lease_s)


def _next_waiting(schedule_id: uuid.UUID) -> RunMessage | None:
    with session_scope() as session:
        return runs.next_waiting(session, schedule_id)


def accept(
    execution_id: uuid.UUID,
    *,
    retries: int,
    max_retries: int,
    send: Send,
    start_at_ms: int | None = None,
    urgent: bool = False,
) -> str:
    """Handle a run message: claim the run and hand it to the runner; returns what happened.

    Runs in a Dramatiq thread until the claim has committed (claims of concurrent
    messages share one transaction), so the message is acknowledged only once the
    run is this worker's in Postgres.

    A slot's message arrives up to `START_AHEAD_MS` early (`start_at_ms`): its run is
    claimed at once and its first call waits on the loop for the slot (a killed
    worker's lease expires as for any run). A run whose start depends on its
    schedule's other runs (an overlap policy) is claimed at the slot instead: the
    thread waits for it, unacknowledged, or, when half the threads wait already,
    sends the message back to the queue for its time.
    """
    runner = get_runner(send)
    message = RunMessage(execution_id, max_retries, retries=retries, urgent=urgent)
    outcome = _admit(runner, message, send, start_at_ms)
    if outcome == "early":
        assert start_at_ms is not None
        if not runner.wait_for(start_at_ms):
            late_ms = max(0, start_at_ms - int(time.time() * 1000))
            send(replace(message, delay_ms=late_ms))
            return "handed back"
        outcome = _admit(runner, message, send, None)
    return outcome


def _admit(runner: Runner, message: RunMessage, send: Send, start_at_ms: int | None) -> str:
    slot = runner.take_slot(urgent=message.urgent)
    if slot is None:
        send(message)  # stopping: hand the message on at once, without spending a retry
        return "handed back"
    try:
        outcome = runner.admit(
            message.execution_id,
            retries=message.retries,
            max_retries=message.max_retries,
            start_at_ms=start_at_ms,
            slot=slot,
        )
    except BaseException:
        slot.release()
        raise
    if outcome != "started":
        slot.release()
    return outcome


def report_failure(execution_id: uuid.UUID, report: FailureReport) -> None:
    """Raise for a run that failed for good, so that Dramatiq dead-letters its message."""
    with session_scope() as session:
        error = runs.failure_of(session, execution_id)
    if error is None:
        return  # retried meanwhile, or gone: nothing to report
    if report == FailureReport.REJECTED:
        raise AgentRejected(error)
    raise StepFailed(f"{error} (no retries left)")


class RunnerLifecycle(dramatiq.Middleware):
    """A process that consumes the run queue starts its runner at boot (its heartbeat
    sweeps for other workers' expired leases even before a run arrives); at a stop,
    runs hand back between steps and the stop waits for the calls in flight."""

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        shutting_down.clear()
        ping_before_use(False)  # every write here retries instead
        queues = getattr(worker, "consumer_whitelist", None)  # None: every queue
        if not queues or RUN_QUEUE in queues or URGENT_QUEUE in queues:
            from tasks.actors import send_run  # the actors module declares on this broker

            get_runner(send_run)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        shutting_down.set()
        runner = current_runner()
        if runner is not None and not runner.drain(DRAIN_S):
            log.warning("calls still in flight after %g s: their leases will expire", DRAIN_S)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        stop_runner()
        ping_before_use(True)  # the process may go on without a worker (tests)


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
