"""A run held by a worker, flown from its claim to its end: the per-run state machine.

A `Flight` is one run this process holds; the runner's `Pilot` runs it on the
runner's event loop, step after step: store the previous answer and start the step
in one write, wait for the automation's flow control, call the agent. A failure
ends in a retry message with Dramatiq's backoff (or the agent's Retry-After), or,
when none is left, the run ends failed and one last message reports it (its actor
raises in `report_failure`, so Dramatiq dead-letters it). Between steps a stopping
worker hands the run back without spending a retry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from dramatiq.common import compute_backoff
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core import logs
from core.errors import AgentRejected, StepFailed
from core.outcome import StepOutcome, stored_request
from core.secrets import SecretUnreadable, redact_values
from core.settings import Settings
from core.vocabulary import ExecutionStatus, FailureReport, OverlapPolicy
from db import runs
from db.runs import RunMessage
from db.secrets import resolve_call_headers
from db.session import session_scope
from tasks import metrics
from tasks.agent import AgentClient, call_agent
from tasks.commits import RETRY_S, Answer, GroupCommits
from tasks.flow import BUSY, FlowControl
from tasks.send import Send
from tasks.signals import shutting_down
from tasks.tracing import Tracing, trace_id_of

log = logging.getLogger(__name__)
T = TypeVar("T")
# A run whose first call would wait longer than this for its automation's flow
# control goes back to the queue (no thread, no runner slot, no retry spent).
FLOW_WAIT_S = 2.0
BUSY_POLL_MS = 100  # how often a call waiting on a full concurrency limit asks again


def agent_payload(claim: runs.Claim, step_number: int, previous_output: Any) -> dict[str, Any]:
    """The body of the agent call for one step of a claimed run."""
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
    # The secret values in them, redacted from what a call stores.
    sent: list[str] = field(default_factory=list, repr=False)


class Pilot:
    """Flies the runs of one runner on its event loop, with its agent client, its group
    commits and its flow control."""

    def __init__(
        self,
        *,
        settings: Settings,
        send: Send,
        commits: GroupCommits,
        flow: FlowControl,
        client: AgentClient,
        lease_until: Callable[[], float],
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.send = send
        self.lease_s = settings.lease_s
        self.commits = commits
        self.flow = flow
        self.client = client
        # Until when (monotonic) this process's leases hold: the heartbeat moves it on.
        self.lease_until = lease_until
        self.tracing = tracing  # None: tracing is off, and costs nothing here

    async def _db(self, work: Callable[[], T]) -> T:
        return await self.commits.run(work)

    async def _send(self, message: RunMessage) -> None:
        await self._db(lambda: self.send(message))

    async def _write(
        self, claim: runs.Claim, answer: Answer | None, work: Callable[[Session], T]
    ) -> T:
        """Store `answer` and do `work` in one transaction (`_retrying`)."""
        return await self._retrying(lambda: self.commits.write(claim, answer, work))

    async def _retrying(self, write: Callable[[], Awaitable[T]]) -> T:
        """`write` (a group commit), retried through a database outage while this
        process's leases hold.

        One transaction per step (the previous step's answer, then this step's start)
        halves the database round trips of a run. Without the retry a Postgres restart
        threw away answers already received and the agent was called again for them
        (tests/test_faults_servers.py). Every write is fenced, so a retry after a
        commit whose acknowledgement was lost changes nothing twice.
        """
        while True:
            try:
                return await write()
            except OperationalError:
                if time.monotonic() + RETRY_S >= self.lease_until():
                    raise  # the lease is ending: recovery will run the step again
                log.warning("database unavailable; retrying to record a step")
                await asyncio.sleep(RETRY_S)

    async def fly(self, flight: Flight) -> None:
        """Run `flight` from its first step not done to its end, a retry or a hand-back."""
        claim = flight.claim
        # This task's own context: every line logged while flying it names the run.
        logs.bind_run(
            execution_id=claim.execution_id,
            automation_id=claim.automation_id,
            workspace_id=claim.workspace_id,
            attempt=claim.attempt,
        )
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
                            RunMessage.hand_back(
                                claim.execution_id,
                                max_retries=flight.max_retries,
                                retries=flight.retries,
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
            if await self._end(claim, answer, ExecutionStatus.SUCCEEDED, result=previous_output):
                metrics.run_ended(ExecutionStatus.SUCCEEDED)
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
        logs.bind_step(step_number)
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
        trace_id = None if self.tracing is None else trace_id_of(claim.execution_id)
        start = runs.StepStart(claim, step_number, request, finished, trace_id)
        step_run_id = await self._retrying(lambda: self.commits.start(start))
        if step_run_id is None:
            if claim.concurrency_limit is not None:
                await self.flow.release(claim.automation_id, holder)
            return None
        if claim.request_headers and flight.headers is None:
            try:
                flight.headers, flight.sent = await self._db(partial(_resolve_headers, claim))
            except SecretUnreadable as exc:
                # Not worth a retry: the workspace must add the secret first.
                error = f"request headers: {exc}"
                return Answer(step_run_id, StepOutcome.failure(error, 0, retryable=False))
        sealed = claim.signing_secret
        if step_number == 1 and claim.attempt == 1:
            metrics.first_call(claim.trigger, claim.scheduled_for.timestamp(), time.time())
        span = None
        if self.tracing is not None:
            span = self.tracing.step(claim.execution_id, step_number, claim.attempt)
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
                traceparent=None if span is None else span.traceparent,
            )
        finally:
            flight.calling = False
            if claim.concurrency_limit is not None:
                await asyncio.shield(self.flow.release(claim.automation_id, holder))
        outcome = redacted(outcome, flight.sent)  # what the call sent never stays in it
        metrics.step_called(outcome)
        if span is not None:
            retried = outcome.retryable and flight.retries < flight.max_retries
            Tracing.end_step(span, outcome, retried=not outcome.ok and retried)
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
            if waited_s == 0:
                metrics.flow_waited(busy=wait_ms == BUSY)
            if answered is not None:  # keep the answer safe while this run waits
                await self._write(claim, answered, lambda session: None)
                answered = None
            pause_s = (BUSY_POLL_MS if wait_ms == BUSY else wait_ms) / 1000
            if can_defer and (waited_s >= FLOW_WAIT_S or pause_s >= FLOW_WAIT_S):
                delay_s = max(pause_s, FLOW_WAIT_S) * (1 + random.random())
                defer = partial(runs.defer, claim=claim, delay_s=delay_s)
                if await self._write(claim, None, defer):
                    message = RunMessage.hand_back(
                        claim.execution_id,
                        max_retries=flight.max_retries,
                        retries=flight.retries,
                        delay_ms=int(delay_s * 1000),
                        urgent=claim.urgent,
                    )
                    await self._send(message)
                    metrics.FLOW_HANDBACKS.inc()
                return False
            pause_s *= 0.5 + random.random()  # spread the waiters out
            await asyncio.sleep(pause_s)
            waited_s += pause_s
            metrics.FLOW_WAIT_SECONDS.inc(pause_s)

    async def _fail(self, flight: Flight, answer: Answer, step_number: int) -> None:
        claim = flight.claim
        outcome = answer.outcome
        error = f"step {step_number}: {outcome.error}"
        if outcome.retryable and flight.retries < flight.max_retries:
            delay_ms = self._backoff_ms(flight.retries)
            if outcome.retry_after_s is not None:
                delay_ms = max(delay_ms, int(outcome.retry_after_s * 1000))
            log.info(
                "%s; retry %d of %d in %.1f s",
                error,
                flight.retries + 1,
                flight.max_retries,
                delay_ms / 1000,
            )
            if await self._release(answer, claim, error, delay_ms / 1000):
                await self._send_retry(flight, delay_ms)
            return
        if not await self._end(claim, answer, ExecutionStatus.FAILED, error=error):
            return  # cancelled or taken over meanwhile: not this worker's failure to report
        metrics.run_ended(ExecutionStatus.FAILED)
        failure = FailureReport.EXHAUSTED if outcome.retryable else FailureReport.REJECTED
        await self._send(
            RunMessage.failed(
                claim.execution_id, retries=flight.retries, report=failure, urgent=claim.urgent
            )
        )

    async def _send_retry(self, flight: Flight, delay_ms: int) -> None:
        """Send the released run's next try, `delay_ms` from now, one more retry spent."""
        claim = flight.claim
        await self._send(
            RunMessage.retry(
                claim.execution_id,
                max_retries=flight.max_retries,
                spent=flight.retries,
                delay_ms=delay_ms,
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
                await self._send_retry(flight, delay_ms)
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
        end = runs.RunEnd(claim, status, error=error, result=result, finished=finished)
        ended = await self._retrying(lambda: self.commits.end(end))
        if ended and self.tracing is not None:
            self.tracing.end_run(
                claim.execution_id, status, started=claim.scheduled_for, error=error
            )
        if claim.schedule_id is not None and claim.overlap_policy not in (
            None,
            OverlapPolicy.ALLOW,
        ):
            # The run held back while this one ran (`buffer_one`, the next catch-up run).
            waiting = await self.commits.next_waiting(claim.schedule_id)
            if waiting is not None:
                await self._send(waiting)
        return ended


def report_failure(execution_id: uuid.UUID, report: FailureReport) -> None:
    """Raise for a run that failed for good, so that Dramatiq dead-letters its message."""
    with session_scope() as session:
        error = runs.failure_of(session, execution_id)
    if error is None:
        return  # retried meanwhile, or gone: nothing to report
    if report == FailureReport.REJECTED:
        raise AgentRejected(error)
    raise StepFailed(f"{error} (no retries left)")


def _resolve_headers(claim: runs.Claim) -> tuple[dict[str, str], list[str]]:
    with session_scope() as session:
        return resolve_call_headers(
            session, claim.workspace_id, claim.request_headers, claim.agent_url
        )


def redacted(outcome: StepOutcome, values: list[str]) -> StepOutcome:
    """`outcome` without the secret values the call sent (an agent may echo them): its
    body, error and output, as stored and passed to the next step."""
    if not values:
        return outcome
    body = None if outcome.body is None else redact_values(outcome.body, values)
    error = None if outcome.error is None else redact_values(outcome.error, values)
    output = _redact_json(outcome.output, values)
    return dataclasses.replace(outcome, body=body, error=error, output=output)


def _redact_json(value: Any, values: list[str]) -> Any:
    """A parsed answer with the values redacted from its strings and keys (nested at most
    MAX_OUTPUT_DEPTH: deeper answers are kept as text, `core.outcome`)."""
    if isinstance(value, str):
        return redact_values(value, values)
    if isinstance(value, list):
        return [_redact_json(item, values) for item in value]
    if isinstance(value, dict):
        return {redact_values(k, values): _redact_json(v, values) for k, v in value.items()}
    return value
