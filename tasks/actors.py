"""The actors: dispatch (every minute), run_execution (one per run), housekeeping.

Actors are thin: the database work lives in `db/`, the agent contract in
`tasks/agent.py`, the schedule maths in `stepwise/schedule.py`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import dramatiq
from dramatiq.common import compute_backoff
from dramatiq.middleware import CurrentMessage
from periodiq import cron
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from db import dispatch as dispatching
from db import runs
from db.session import session_scope
from stepwise.errors import StepwiseError
from stepwise.settings import get_settings
from tasks.agent import StepOutcome, call_agent, get_client
from tasks.broker import DISPATCH_QUEUE, RUN_QUEUE, broker

log = logging.getLogger("stepwise")
T = TypeVar("T")
# One line per agent call drowns the worker log; failures are stored on their step.
logging.getLogger("httpx").setLevel(logging.WARNING)

# Set when this worker process begins a graceful stop: runs hand back between steps.
shutting_down = threading.Event()


class GracefulStop(dramatiq.Middleware):
    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        shutting_down.clear()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        shutting_down.set()


broker.add_middleware(GracefulStop())


class StepFailed(StepwiseError):
    """A step failed in a way worth retrying; Dramatiq's Retries schedules the next try."""


class AgentRejected(StepwiseError):
    """A step failed for good (4xx, bad URL); the message is dead-lettered at once."""


# --- sending ---------------------------------------------------------------


def send_run(
    execution_id: uuid.UUID, *, max_retries: int, delay_ms: int = 0, retries: int = 0
) -> None:
    """Hand one execution to the workers, `delay_ms` from now."""
    options: dict[str, Any] = {"max_retries": max_retries}
    if retries:
        options["retries"] = retries
    message = run_execution.message_with_options(args=(str(execution_id),), **options)
    broker.enqueue(message, delay=delay_ms if delay_ms > 0 else None)


def send_dispatched(enqueues: Iterable[dispatching.Enqueue], since: float) -> int:
    elapsed_ms = int((time.monotonic() - since) * 1000)
    count = 0
    for item in enqueues:
        send_run(
            item.execution_id, max_retries=item.max_retries, delay_ms=item.due_in_ms - elapsed_ms
        )
        count += 1
    return count


# --- dispatch ----------------------------------------------------------------

LOCKED_RETRIES = 20


def dispatch_due(now: datetime | None = None) -> int:
    """Dispatch every due schedule, batch after batch; returns the runs sent.

    `now` is the database's clock unless a test injects one.
    """
    settings = get_settings()
    config = dispatching.DispatchConfig(
        horizon_s=settings.dispatch_horizon_s,
        grace_s=settings.misfire_grace_s,
        batch=settings.dispatch_batch,
    )
    sent = 0
    for _ in range(LOCKED_RETRIES):
        while True:
            with session_scope() as session:
                clock = now or runs.db_now(session)
                started = time.monotonic()
                enqueues, claimed = dispatching.dispatch_batch(session, now=clock, config=config)
            # Sent only after the commit: a worker must find its row.
            sent += send_dispatched(enqueues, started)
            if claimed < config.batch:
                break
        # SKIP LOCKED passed over schedules another transaction held (another
        # dispatcher, or a run updating its counters): wait briefly and take them
        # now rather than a minute late at the next tick.
        with session_scope() as session:
            clock = now or runs.db_now(session)
            if not dispatching.count_due(session, now=clock, horizon_s=config.horizon_s):
                break
        time.sleep(0.05)
    return sent


@dramatiq.actor(
    queue_name=DISPATCH_QUEUE, periodic=cron("* * * * *"), max_retries=0, time_limit=55_000
)
def dispatch() -> None:
    sent = dispatch_due()
    with session_scope() as session:
        dispatching.beat(session, "dispatch", sent=sent)
    log.info("dispatch: %d run(s) sent", sent)


# --- running -----------------------------------------------------------------


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
    }


RECORD_RETRY_S = 0.5


@dataclass(frozen=True)
class Answer:
    """A step the agent answered, not yet stored: it is stored with the next write."""

    step_run_id: int
    outcome: StepOutcome
    lease_ends: float  # monotonic time until which no other worker can take the run


def _write(claim: runs.Claim, answer: Answer | None, work: Callable[[Session], T]) -> T:
    """Store `answer` and do `work` in one transaction, retrying through a database
    outage while our lease holds.

    One transaction per step (the previous step's answer, then this step's start)
    instead of two halves the database round trips of a run. Without the retry a
    Postgres restart threw away answers already received and the agent was called
    again for them (tests/test_faults_servers.py). Every write is fenced, so a retry
    after a commit whose acknowledgement was lost changes nothing twice.
    """
    until = answer.lease_ends if answer else time.monotonic()
    while True:
        try:
            with session_scope() as session:
                if answer is not None:
                    runs.finish_step(session, answer.step_run_id, answer.outcome)
                return work(session)
        except OperationalError:
            if time.monotonic() + RECORD_RETRY_S >= until:
                raise  # the lease is ending: recovery will run the step again
            log.warning("database unavailable; retrying to record execution %s", claim.execution_id)
            time.sleep(RECORD_RETRY_S)


def _run_step(
    claim: runs.Claim, step_number: int, previous_output: Any, answered: Answer | None
) -> Answer | None:
    """Store the previous answer, start this step, call the agent; None if we lost the run."""
    settings = get_settings()
    payload = agent_payload(claim, step_number, previous_output)
    key = f"{claim.execution_id}:{step_number}"
    request = {"url": claim.agent_url, "headers": {"Idempotency-Key": key}, "body": payload}
    step_run_id = _write(
        claim,
        answered,
        lambda session: runs.start_step(
            session, claim, step_number, request, margin_s=settings.lease_margin_s
        ),
    )
    if step_run_id is None:
        return None  # cancelled, or another worker took over after our lease ran out
    # The lease runs from here: until it expires no other worker can take the step.
    lease_ends = time.monotonic() + claim.step_timeout_s + settings.lease_margin_s
    outcome = call_agent(
        get_client(),
        claim.agent_url,
        payload,
        idempotency_key=key,
        timeout_s=claim.step_timeout_s,
        max_bytes=settings.max_response_bytes,
    )
    return Answer(step_run_id, outcome, lease_ends)


def _fail(
    claim: runs.Claim, answer: Answer, step_number: int, retries: int, max_retries: int
) -> None:
    outcome = answer.outcome
    error = f"step {step_number}: {outcome.error}"
    if outcome.retryable and retries < max_retries:
        settings = get_settings()
        _, delay_ms = compute_backoff(
            retries, factor=settings.min_backoff_ms, max_backoff=settings.max_backoff_ms
        )
        if outcome.retry_after_s is not None:
            delay_ms = max(delay_ms, int(outcome.retry_after_s * 1000))
        released = _write(
            claim,
            answer,
            lambda session: runs.release_for_retry(session, claim, error, delay_ms / 1000),
        )
        if released:
            raise dramatiq.Retry(error, delay=delay_ms)
        return
    _end(claim, answer, "failed", error=error)
    if outcome.retryable:
        raise StepFailed(f"{error} (no retries left)")
    raise AgentRejected(error)


def _start_waiting(claim: runs.Claim) -> None:
    """With `buffer_one`, the run held back while this one ran starts now."""
    if claim.schedule_id is None or claim.overlap_policy != "buffer_one":
        return
    with session_scope() as session:
        waiting = runs.next_waiting(session, claim.schedule_id)
    if waiting is not None:
        send_run(waiting.execution_id, max_retries=waiting.max_retries, retries=waiting.retries)


def _end(
    claim: runs.Claim,
    answer: Answer | None,
    status: str,
    *,
    error: str | None = None,
    result: Any = None,
) -> None:
    _write(
        claim,
        answer,
        lambda session: runs.finish_execution(session, claim, status, error=error, result=result),
    )
    _start_waiting(claim)


def _release(claim: runs.Claim, answer: Answer | None, error: str) -> None:
    """Hand an interrupted run back to the queue, so its retry message can claim it."""
    try:
        _write(claim, answer, lambda session: runs.release_for_retry(session, claim, error, 0))
    except Exception:  # the database may be the reason we are here
        log.exception("could not release execution %s; its lease will expire", claim.execution_id)


def execute(execution_id: uuid.UUID, *, retries: int, max_retries: int) -> str:
    """Run one execution from its first unfinished step; returns what happened."""
    settings = get_settings()
    with session_scope() as session:
        claim = runs.claim_execution(session, execution_id, margin_s=settings.lease_margin_s)
    if isinstance(claim, str):
        return claim
    previous_output = claim.previous_output
    answer: Answer | None = None
    try:
        for step_number in range(claim.first_step, claim.total_steps + 1):
            if shutting_down.is_set():
                # Hand the run on at once, without spending a retry of its budget.
                _release(claim, answer, "the worker stopped between steps; resuming elsewhere")
                send_run(execution_id, max_retries=max_retries, retries=retries)
                return "handed back"
            answer = _run_step(claim, step_number, previous_output, answer)
            if answer is None:
                return "lost"
            if not answer.outcome.ok:
                _fail(claim, answer, step_number, retries, max_retries)
                return "failed"
            previous_output = answer.outcome.output
    except (dramatiq.Retry, StepFailed, AgentRejected):
        raise
    except BaseException as exc:  # time limit, database down, a bug: never leave it running
        _release(claim, answer, f"interrupted: {type(exc).__name__}: {exc}")
        raise
    _end(claim, answer, "succeeded", result=previous_output)
    return "succeeded"


@dramatiq.actor(queue_name=RUN_QUEUE, max_retries=0, throws=(AgentRejected,))
def run_execution(execution_id: str) -> None:
    message = CurrentMessage.get_current_message()
    options = message.options if message is not None else {}
    execute(
        uuid.UUID(execution_id),
        retries=options.get("retries", 0),
        max_retries=options.get("max_retries", 0),
    )


# --- housekeeping ------------------------------------------------------------


def recover_stranded() -> int:
    """Send again every run whose message was lost; returns how many were sent."""
    settings = get_settings()
    sent = 0
    while True:
        with session_scope() as session:
            resends = runs.stranded_executions(
                session, requeue_after_s=settings.requeue_after_s, limit=1000
            )
        for item in resends:
            send_run(item.execution_id, max_retries=item.max_retries, retries=item.retries)
        sent += len(resends)
        if len(resends) < 1000:
            return sent


def purge_old_history() -> int:
    settings = get_settings()
    deleted = 0
    while True:
        with session_scope() as session:
            batch = runs.purge_history(
                session, older_than_days=settings.retention_days, batch=settings.retention_batch
            )
        deleted += batch
        if batch < settings.retention_batch:
            return deleted


@dramatiq.actor(
    queue_name=DISPATCH_QUEUE, periodic=cron("* * * * *"), max_retries=0, time_limit=55_000
)
def housekeeping() -> None:
    recovered = recover_stranded()
    purged = purge_old_history()
    with session_scope() as session:
        dispatching.beat(session, "housekeeping", recovered=recovered, purged=purged)
    if recovered or purged:
        log.warning(
            "housekeeping: re-sent %d lost run(s), purged %d old execution(s)", recovered, purged
        )
