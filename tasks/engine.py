"""How the actors' work is done: dispatch due schedules, run an execution, recover.

`tasks/actors.py` declares the actors and hands each function here a `send`
callable that puts a run on the queue through the actor's own API; nothing here
sends by itself, so the order "commit, then send" is visible at every call.
The database work lives in `db/`, the agent call in `tasks/agent.py`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import dramatiq
from dramatiq.common import compute_backoff
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.errors import AgentRejected, StepFailed
from core.outcome import StepOutcome, stored_request
from core.settings import get_settings
from core.vocabulary import ExecutionStatus, OverlapPolicy
from db import dispatch as dispatching
from db import runs
from db.runs import RunMessage
from db.session import db_now, session_scope
from tasks.agent import call_agent, get_client
from tasks.signals import shutting_down

log = logging.getLogger("stepwise")
T = TypeVar("T")
Send = Callable[[RunMessage], None]
# One line per agent call drowns the worker log; failures are stored on their step.
logging.getLogger("httpx").setLevel(logging.WARNING)


def send_all(send: Send, messages: Iterable[RunMessage], since: float) -> int:
    """Send runs whose delays were measured at monotonic time `since`; returns how many."""
    elapsed_ms = int((time.monotonic() - since) * 1000)
    count = 0
    for message in messages:
        send(
            RunMessage(
                message.execution_id,
                message.max_retries,
                retries=message.retries,
                delay_ms=message.delay_ms - elapsed_ms,
            )
        )
        count += 1
    return count


# --- dispatch ----------------------------------------------------------------

LOCKED_RETRIES = 20
SendMany = Callable[[Sequence[RunMessage]], None]


def _one_by_one(send: Send) -> SendMany:
    def send_many(messages: Sequence[RunMessage]) -> None:
        for message in messages:
            send(message)

    return send_many


def _send_batch(send_many: SendMany, messages: list[RunMessage], since: float) -> int:
    """Send runs whose delays were measured at monotonic time `since`; returns how many."""
    elapsed_ms = int((time.monotonic() - since) * 1000)
    send_many(
        [
            RunMessage(
                m.execution_id, m.max_retries, retries=m.retries, delay_ms=m.delay_ms - elapsed_ms
            )
            for m in messages
        ]
    )
    return len(messages)


class _Sender:
    """Sends each committed batch from one thread while the next batch is being claimed.

    Redis then works while PostgreSQL does, and batches still go out in the order
    they were committed. `close()` waits for every batch handed over and raises
    the first error of a send.
    """

    def __init__(self, send_many: SendMany) -> None:
        self._send_many = send_many
        self._batches: queue.Queue[tuple[list[RunMessage], float] | None] = queue.Queue(2)
        self._error: BaseException | None = None
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="dispatch-sender", daemon=True)
        self._thread.start()

    def put(self, messages: list[RunMessage], since: float) -> None:
        if self._error is not None:
            raise self._error
        if messages:
            self._batches.put((messages, since))

    def close(self) -> int:
        self._batches.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.sent

    def _run(self) -> None:
        while (batch := self._batches.get()) is not None:
            if self._error is None:  # after a failed send, the rest is left to housekeeping
                try:
                    self.sent += _send_batch(self._send_many, *batch)
                except BaseException as exc:
                    self._error = exc


def dispatch_due(
    send: Send, now: datetime | None = None, *, send_many: SendMany | None = None
) -> int:
    """Dispatch every due schedule, batch after batch; returns the runs sent.

    Each batch's runs go out together through `send_many` (one by one through
    `send` without it), once its transaction has committed, while the next batch
    is claimed. `now` is the database's clock unless a test injects one.
    """
    settings = get_settings()
    config = dispatching.DispatchConfig(
        horizon_s=settings.dispatch_horizon_s,
        grace_s=settings.misfire_grace_s,
        batch=settings.dispatch_batch,
    )
    sender = _Sender(send_many or _one_by_one(send))
    try:
        for _ in range(LOCKED_RETRIES):
            while True:
                with session_scope() as session:
                    clock = now or db_now(session)
                    started = time.monotonic()
                    messages, claimed = dispatching.dispatch_batch(
                        session, now=clock, config=config
                    )
                # Sent only after the commit: a worker must find its row.
                sender.put(messages, started)
                if claimed < config.batch:
                    break
            # SKIP LOCKED passed over schedules another transaction held (another
            # dispatcher, or a run updating its counters): wait briefly and take them
            # now rather than a minute late at the next tick.
            with session_scope() as session:
                clock = now or db_now(session)
                if not dispatching.count_due(session, now=clock, horizon_s=config.horizon_s):
                    break
            time.sleep(0.05)
    finally:
        sent = sender.close()  # what was committed is sent, even if a later batch failed
    return sent


def tick_dispatch(send: Send, *, send_many: SendMany | None = None) -> int:
    """The minute tick: dispatch, then record that the scheduler is alive."""
    sent = dispatch_due(send, send_many=send_many)
    with session_scope() as session:
        dispatching.beat(session, "dispatch", sent=sent)
    log.info("dispatch: %d run(s) sent", sent)
    return sent


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
    request = stored_request(claim.agent_url, {"Idempotency-Key": key}, payload)
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
    secret = claim.signing_secret
    outcome = call_agent(
        get_client(),
        claim.agent_url,
        payload,
        idempotency_key=key,
        timeout_s=claim.step_timeout_s,
        max_bytes=settings.max_response_bytes,
        signing_secret=None if secret is None else settings.secret_box().open(secret),
    )
    return Answer(step_run_id, outcome, lease_ends)


def _fail(
    claim: runs.Claim,
    answer: Answer,
    step_number: int,
    *,
    retries: int,
    max_retries: int,
    send: Send,
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
    if not _end(claim, answer, ExecutionStatus.FAILED, send, error=error):
        return  # cancelled or taken over meanwhile: not this worker's failure to report
    if outcome.retryable:
        raise StepFailed(f"{error} (no retries left)")
    raise AgentRejected(error)


def _start_waiting(claim: runs.Claim, send: Send) -> None:
    """The run held back while this one ran (`buffer_one`, or the next catch-up run) starts now."""
    if claim.schedule_id is None or claim.overlap_policy in (None, OverlapPolicy.ALLOW):
        return
    with session_scope() as session:
        waiting = runs.next_waiting(session, claim.schedule_id)
    if waiting is not None:
        send(waiting)


def _end(
    claim: runs.Claim,
    answer: Answer | None,
    status: ExecutionStatus,
    send: Send,
    *,
    error: str | None = None,
    result: Any = None,
) -> bool:
    """End the run as `status`; False if it was no longer this worker's (cancelled, taken over)."""
    ended = _write(
        claim,
        answer,
        lambda session: runs.finish_execution(session, claim, status, error=error, result=result),
    )
    _start_waiting(claim, send)
    return ended


def _release(claim: runs.Claim, answer: Answer | None, error: str) -> None:
    """Hand an interrupted run back to the queue, so its retry message can claim it."""
    try:
        _write(claim, answer, lambda session: runs.release_for_retry(session, claim, error, 0))
    except Exception:  # the database may be the reason we are here
        log.exception("could not release execution %s; its lease will expire", claim.execution_id)


def execute(execution_id: uuid.UUID, *, retries: int, max_retries: int, send: Send) -> str:
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
                send(RunMessage(execution_id, max_retries, retries=retries))
                return "handed back"
            answer = _run_step(claim, step_number, previous_output, answer)
            if answer is None:
                return "lost"
            if not answer.outcome.ok:
                _fail(
                    claim,
                    answer,
                    step_number,
                    retries=retries,
                    max_retries=max_retries,
                    send=send,
                )
                return "failed"
            previous_output = answer.outcome.output
    except (dramatiq.Retry, StepFailed, AgentRejected):
        raise
    except BaseException as exc:  # time limit, database down, a bug: never leave it running
        _release(claim, answer, f"interrupted: {type(exc).__name__}: {exc}")
        raise
    _end(claim, answer, ExecutionStatus.SUCCEEDED, send, result=previous_output)
    return "succeeded"


# --- housekeeping ------------------------------------------------------------


def recover_stranded(send: Send) -> int:
    """Send again every run whose message was lost; returns how many were sent."""
    settings = get_settings()
    sent = 0
    while True:
        with session_scope() as session:
            resends = runs.stranded_executions(
                session, requeue_after_s=settings.requeue_after_s, limit=1000
            )
        for item in resends:
            send(item)
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


def tick_housekeeping(send: Send) -> None:
    """The minute tick: re-send lost runs, purge old history, record the pass."""
    recovered = recover_stranded(send)
    purged = purge_old_history()
    with session_scope() as session:
        dispatching.beat(session, "housekeeping", recovered=recovered, purged=purged)
    if recovered or purged:
        log.warning(
            "housekeeping: re-sent %d lost run(s), purged %d old execution(s)", recovered, purged
        )
