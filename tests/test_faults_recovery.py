"""Fault test: housekeeping recovers a run a bounded number of times, then gives up.

A run that kills or loses its worker every time (a poison step, a worker killed by
the kernel for memory) would otherwise be sent again every minute forever, calling
the agent each time. The real recovery pass (`tasks.periodic.recover_stranded`) runs
against the real PostgreSQL; each message it sends is taken by `claim_execution`,
as a worker's first act, and the worker then "dies": its step stays running and its
lease runs out, moved into the past on the database's clock.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from core.limits import MAX_RECOVERIES
from core.vocabulary import Trigger
from db.claims import claim_execution
from db.models import Execution, Schedule
from db.recovery import RECOVERIES_EXHAUSTED
from db.runs import LOST_STEP_ERROR, RunMessage, start_step
from db.session import session_scope
from tasks import periodic
from testkit.factories import (
    execution,
    fetch,
    make_automation,
    make_execution,
    make_schedule,
    now,
    step_runs,
)
from testkit.prometheus import metric


def _age(execution_id: uuid.UUID) -> None:
    """Five minutes pass: the lease (if any) ran out, the last send is long ago."""
    past = now() - timedelta(minutes=5)
    with session_scope() as session:
        session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(lease_expires_at=past, available_at=past)
        )


def _worker_dies_in_step_1(execution_id: uuid.UUID) -> int:
    """A worker takes the run, starts step 1 and is killed; returns the claim's attempt."""
    with session_scope() as session:
        claim = claim_execution(session, execution_id, lease_s=5)
        assert not isinstance(claim, str), claim
        assert start_step(session, claim, 1, {}, lease_s=5) is not None
    _age(execution_id)
    return claim.attempt


def _scheduled_run(max_retries: int) -> tuple[uuid.UUID, uuid.UUID]:
    automation_id = make_automation(steps=2, max_retries=max_retries)
    # A schedule far in the future: nothing dispatches it; the run is made by hand.
    schedule_id = make_schedule(automation_id, start_at=datetime(2099, 1, 1, tzinfo=UTC))
    execution_id = make_execution(
        automation_id,
        schedule_id=schedule_id,
        trigger=Trigger.SCHEDULE,
        scheduled_for=datetime(2098, 1, 1, tzinfo=UTC),
    )
    return schedule_id, execution_id


def test_a_run_that_keeps_losing_its_worker_is_given_up_with_the_reason(db: None) -> None:
    # given a scheduled run with 2 retries whose worker dies in step 1 every time
    max_retries = 2
    claims = max_retries + 1 + MAX_RECOVERIES
    schedule_id, execution_id = _scheduled_run(max_retries)
    sent: list[RunMessage] = []
    gave_up = metric("stepwise_runs_given_up_total")
    recovered = metric("stepwise_runs_recovered_total", by="housekeeping")
    # when every message housekeeping sends again is taken by a worker that dies
    assert _worker_dies_in_step_1(execution_id) == 1
    while periodic.recover_stranded(sent.append):
        assert len(sent) < claims, "housekeeping never gave up"
        assert _worker_dies_in_step_1(execution_id) == len(sent) + 1
    # then the run was recovered MAX_RECOVERIES times beyond its retries, then failed
    assert len(sent) == claims - 1
    assert [m.retries for m in sent] == list(range(1, claims))
    done = execution(execution_id)
    assert (done.status, done.attempt, done.error) == ("failed", claims, RECOVERIES_EXHAUSTED)
    assert metric("stepwise_runs_given_up_total") == gave_up + 1
    assert metric("stepwise_runs_recovered_total", by="housekeeping") == recovered + claims - 1
    assert done.finished_at is not None and done.lease_expires_at is None
    # and no step is left running: the last one is marked lost like the others
    assert [(r.attempt, r.status, r.error) for r in step_runs(execution_id)] == [
        (n, "failed", LOST_STEP_ERROR) for n in range(1, claims + 1)
    ]
    # and the schedule counts it as one failed run
    schedule = fetch(Schedule, schedule_id)
    assert (schedule.run_count, schedule.failure_count, schedule.success_count) == (1, 1, 0)
    assert schedule.last_status == "failed"
    # and the next passes leave it alone
    _age(execution_id)
    assert periodic.recover_stranded(sent.append) == 0
    assert execution(execution_id).status == "failed"


def test_a_queued_run_whose_message_keeps_getting_lost_is_never_given_up(db: None) -> None:
    # given a run that was never claimed (its message lost, or it waits its turn)
    _, execution_id = _scheduled_run(max_retries=0)
    sent: list[RunMessage] = []
    # when housekeeping sends it again many more times than the bound
    for _ in range(MAX_RECOVERIES * 3):
        _age(execution_id)
        assert periodic.recover_stranded(sent.append) == 1
    # then it is still queued: no claim ever called the agent, so nothing is spent
    assert execution(execution_id).status == "queued"
    assert all(m.retries == 0 for m in sent)
