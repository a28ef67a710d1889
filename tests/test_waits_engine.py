"""Durable waits run by real workers: sleeps, async agents (202 and a callback later) and
approvals park their run with no lease, thread or slot, and wake it at their time or when
resolved; across a kill -9, a Redis flush and 200 runs at once, nothing is lost and
nothing runs twice (docs/RELIABILITY.md, "Waits").

The workers are real Dramatiq workers (in this process, or a Procfile process), the agent a
real HTTP server on loopback that records every call, the database and Redis the suite's
own. A callback or a decision goes through `service.waits`, as the API's does (`db.waits`:
the run's row locked first, then the wait row moved only while it waits, the run woken if
parked).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from core.graph import graph_of
from core.limits import MAX_RECOVERIES
from core.settings import get_settings
from core.vocabulary import FINAL_STATUSES, ExecutionStatus, StepState
from core.waits import WaitClosed, WaitPurpose, open_token
from db import runs
from db.claims import claim_execution, claim_executions
from db.models import Automation, Execution, StepRun
from db.recovery import stranded_executions
from db.runs import Claim, RunMessage
from db.session import session_scope
from service import executions as execution_service
from service import waits as wait_service
from stepwise.demo_agent import Call, Reply
from tasks import lifecycle, periodic
from tasks.graphrun import rebuild
from tasks.send import send_run, send_runs
from testkit.factories import (
    ADMIN,
    add_executions,
    execution,
    make_execution,
    make_graph,
    make_schedule,
    now,
    step_runs,
)
from testkit.processes import READY, worker_in_process
from testkit.runs import ended
from testkit.waiting import wait_for
from testkit.waits import parked_run


def _napping_graph(agent_url: str, **nap: Any) -> uuid.UUID:
    """before → nap (a sleep of `nap`'s settings) → after."""
    return make_graph(
        [
            {"key": "before", "message": "before"},
            {"key": "nap", "needs": ["before"], "kind": "sleep", **nap},
            {
                "key": "after",
                "needs": ["nap"],
                "message": "after {{ steps.nap.output.slept_until }}",
            },
        ],
        agent_url=agent_url,
    )


def _sent(automation_id: uuid.UUID, **values: Any) -> uuid.UUID:
    execution_id = make_execution(automation_id, **values)
    send_run(RunMessage(execution_id, 0))
    return execution_id


def _parked(execution_id: uuid.UUID, *, timeout: float = 30) -> Execution:
    parked: Execution = wait_for(
        lambda: (e := execution(execution_id)).status == "waiting" and e,
        timeout=timeout,
        message=f"execution {execution_id} to park",
        details=lambda: str([(r.step_key, r.status, r.error) for r in step_runs(execution_id)]),
    )
    return parked


def _row_of(execution_id: uuid.UUID, key: str) -> StepRun:
    """The latest step run of step `key`."""
    return [r for r in step_runs(execution_id) if r.step_key == key][-1]


def _arrivals(agent: Any, execution_id: uuid.UUID, key: str) -> list[Call]:
    return [c for c in agent.calls_for(str(execution_id)) if c.body["step_key"] == key]


def _statuses_of(execution_ids: list[uuid.UUID]) -> Counter[str]:
    """How many of the runs have each status (one query)."""
    with session_scope() as session:
        return Counter(
            session.scalars(select(Execution.status).where(Execution.id.in_(execution_ids)))
        )


def _ended_by_housekeeping(execution_ids: list[uuid.UUID], *, timeout: float) -> int:
    """Run housekeeping's recovery (as its minute tick does) until every run has ended;
    how many runs it sent again."""
    resent = [0]

    def all_ended() -> bool:
        resent[0] += periodic.recover_stranded(send_run)
        return set(_statuses_of(execution_ids)) <= set(FINAL_STATUSES)

    wait_for(all_ended, timeout=timeout, interval=0.5, message="every run to end")
    return resent[0]


# --- sleeps ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sleep_outlives_a_kill_9_of_its_worker_neither_shortened_nor_repeated(
    procs: Any, agent: Any
) -> None:
    # given a run parked in a 6 s sleep by a worker process
    automation_id = _napping_graph(agent.url, sleep_s=6)
    procs.start("worker")
    procs.wait_ready("worker", READY)
    execution_id = _sent(automation_id)
    parked = _parked(execution_id)
    nap = _row_of(execution_id, "nap")
    assert nap.status == "waiting" and nap.wait_until is not None
    assert parked.available_at == nap.wait_until and parked.lease_expires_at is None
    # when the worker is killed (SIGKILL: no goodbye) and another one starts
    procs.kill("worker")
    procs.start("worker", as_name="worker2")
    procs.wait_ready("worker2", READY)
    _ended_by_housekeeping([execution_id], timeout=120)
    done = execution(execution_id)
    assert done.status == "succeeded", done.error
    # then the step after the sleep was called once, not before the stored end of the sleep
    (after,) = _arrivals(agent, execution_id, "after")
    until = nap.wait_until.timestamp()
    assert until <= after.at < until + 60
    # and the sleep is one row, ended at the end it stored at its start (not started again)
    naps = [r for r in step_runs(execution_id) if r.step_key == "nap"]
    assert [(r.status, r.wait_until) for r in naps] == [("succeeded", nap.wait_until)]
    slept_until = json.loads(naps[0].response_body or "")["slept_until"]
    assert datetime.fromisoformat(slept_until) == nap.wait_until
    assert after.body["steps"]["nap"]["output"] == {"slept_until": slept_until}
    assert Counter(c.body["step_key"] for c in agent.calls_for(str(execution_id))) == {
        "before": 1,
        "after": 1,
    }


def test_a_parked_run_holds_no_lease_and_no_worker_and_wakes_at_its_instant(
    db: None, redis_client: Any, agent: Any
) -> None:
    # given a sleep until an instant given by the run's input, 4 s ahead
    automation_id = _napping_graph(agent.url, sleep_until="{{ input.at }}")
    at = datetime.now(UTC) + timedelta(seconds=4)
    with worker_in_process(threads=2):
        execution_id = _sent(automation_id, input={"at": at.isoformat()})
        # when it parks
        parked = _parked(execution_id)
        # then it holds no lease and waits until the instant, stored once
        assert parked.lease_expires_at is None and parked.available_at == at
        assert _row_of(execution_id, "nap").wait_until == at
        # and no worker holds it: no flight, no runner slot
        runner = lifecycle.current_runner()
        assert runner is not None
        wait_for(lambda: execution_id not in runner.flights and runner.held == 0)
        done = ended(execution_id, agent=agent)
    # and it woke at its instant, not before (its wake-up message, no housekeeping)
    assert done.status == "succeeded", done.error
    assert done.attempt == 1  # a wake is not an attempt
    (after,) = _arrivals(agent, execution_id, "after")
    assert at.timestamp() <= after.at < at.timestamp() + 5


def test_a_redis_flush_while_runs_are_parked_loses_none(
    db: None, redis_client: Any, agent: Any
) -> None:
    # given 20 runs parked in a 3 s sleep, and their worker stopped
    automation_id = _napping_graph(agent.url, sleep_s=3)
    with worker_in_process(threads=4):
        ids = [_sent(automation_id) for _ in range(20)]
        for execution_id in ids:
            _parked(execution_id)
    # when Redis loses every message (their wake-ups with them)
    redis_client.flushdb()
    # then housekeeping sends each parked run again once its time has passed, and a worker
    # completes each, once
    with worker_in_process(threads=4):
        resent = _ended_by_housekeeping(ids, timeout=90)
    assert resent >= 20
    assert {execution(i).status for i in ids} == {"succeeded"}
    assert {execution(i).attempt for i in ids} == {1}
    keys = Counter(c.idempotency_key for i in ids for c in agent.calls_for(str(i)))
    assert len(keys) == 40 and set(keys.values()) == {1}


def test_a_sleep_until_a_past_instant_ends_at_once_and_one_too_far_ahead_fails(
    db: None, redis_client: Any, agent: Any
) -> None:
    # given a sleep until an instant from the input: one an hour ago, one 8 days ahead
    automation_id = _napping_graph(agent.url, sleep_until="{{ input.at }}")
    past = datetime.now(UTC) - timedelta(hours=1)
    ahead = datetime.now(UTC) + timedelta(days=8)
    with worker_in_process(threads=2):
        gone = _sent(automation_id, input={"at": past.isoformat()})
        far = _sent(automation_id, input={"at": ahead.isoformat()})
        done, refused = ended(gone, agent=agent), ended(far, agent=agent)
    # then the past instant ended the sleep at once, as slept until that instant
    assert done.status == "succeeded", done.error
    nap = _row_of(gone, "nap")
    assert (nap.status, nap.wait_until) == ("succeeded", past)
    (after,) = _arrivals(agent, gone, "after")
    assert datetime.fromisoformat(after.body["steps"]["nap"]["output"]["slept_until"]) == past
    # and the instant too far ahead failed its step with the reason, before any wait
    assert refused.status == "failed"
    assert "more than 7 days ahead" in (refused.error or "")
    assert _row_of(far, "nap").status == "failed"
    assert _arrivals(agent, far, "after") == []


@pytest.mark.slow
def test_200_parked_runs_wake_and_each_completes_exactly_once(
    db: None, redis_client: Any, agent: Any
) -> None:
    # given 200 runs that all sleep until the same instant, 20 s ahead
    automation_id = _napping_graph(agent.url, sleep_until="{{ input.at }}")
    at = datetime.now(UTC) + timedelta(seconds=20)
    ids = [make_execution(automation_id, input={"at": at.isoformat()}) for _ in range(200)]
    with worker_in_process(threads=8):
        send_runs([RunMessage(i, 0) for i in ids])
        # when all 200 are parked at once
        wait_for(
            lambda: _statuses_of(ids) == {"waiting": 200},
            timeout=19,
            interval=0.5,
            message="200 runs parked",
            details=lambda: str(_statuses_of(ids)),
        )
        # then, woken together, each completes
        for execution_id in ids:
            ended(execution_id, timeout=60, agent=agent)
    assert _statuses_of(ids) == {"succeeded": 200}
    # exactly once: every call's key reached the agent once, none before the instant
    calls = [c for i in ids for c in agent.calls_for(str(i))]
    keys = Counter(c.idempotency_key for c in calls)
    assert len(keys) == 400 and set(keys.values()) == {1}
    assert all(c.at >= at.timestamp() for c in calls if c.body["step_key"] == "after")


# --- async agents ----------------------------------------------------------------------------


def _async_responder(call: Call) -> Reply:
    key = call.body["step_key"]
    if key == "job":
        return Reply(202, {"accepted": True})
    if key == "quick":
        return Reply(200, {"text": "now"})
    return Reply(200, {"used": call.body["message"]})


def test_an_async_step_parks_on_202_and_its_callback_wakes_the_dependent(
    db: None, redis_client: Any, agent: Any
) -> None:
    # given an async step whose agent answers 202, another whose agent answers at once, and
    # a step that needs both
    automation_id = make_graph(
        [
            {"key": "job", "message": "transcribe", "kind": "async", "timeout_s": 600},
            {"key": "quick", "message": "quick", "kind": "async", "timeout_s": 600},
            {
                "key": "use",
                "needs": ["job", "quick"],
                "message": "{{ steps.job.output.text }} {{ steps.quick.output.text }}",
            },
        ],
        agent_url=agent.url,
    )
    agent.responder = _async_responder
    with worker_in_process(threads=2):
        execution_id = _sent(automation_id)
        # when the run parks on the accepted call
        parked = _parked(execution_id)
        assert parked.lease_expires_at is None
        job, quick = _row_of(execution_id, "job"), _row_of(execution_id, "quick")
        # then the accepted call waits for the whole step's timeout; the other answered now
        assert (job.status, job.response_status, quick.status) == ("waiting", 202, "succeeded")
        assert job.wait == {"kind": "async", "progress": None, "note": None, "progress_at": None}
        assert job.wait_until is not None
        assert (job.wait_until - job.started_at).total_seconds() == 600
        assert parked.available_at == job.wait_until
        # and its call carried a callback URL for that step run, never stored
        (call,) = _arrivals(agent, execution_id, "job")
        url = call.body["callback_url"]
        base = f"{get_settings().public_base_url()}/v1/callbacks/"
        assert url.startswith(base)
        token = open_token(get_settings().secret_box(), url[len(base) :], WaitPurpose.CALLBACK)
        assert token.step_run_id == job.id
        assert "callback_url" not in job.request["body"]
        assert "callback_url" in job.request["not_stored"]
        # when the agent's result comes back (the callback)
        wait_service.callback(url[len(base) :], json.dumps({"output": {"text": "hello"}}).encode())
        done = ended(execution_id, agent=agent)
    # then the run went on: the dependent got the output
    assert done.status == "succeeded", done.error
    (use,) = _arrivals(agent, execution_id, "use")
    assert use.body["steps"]["job"]["output"] == {"text": "hello"}
    assert use.body["message"] == "hello now"
    assert done.result == {"use": {"used": "hello now"}}
    # and a second callback changes nothing
    with pytest.raises(WaitClosed):
        wait_service.callback(url[len(base) :], b'{"error": "late"}')
    assert json.loads(_row_of(execution_id, "job").response_body or "") == {"text": "hello"}

    assert Counter(c.body["step_key"] for c in agent.calls_for(str(execution_id))) == {
        "job": 1,
        "quick": 1,
        "use": 1,
    }


def test_an_async_step_without_a_callback_fails_at_its_timeout(
    db: None, redis_client: Any, agent: Any
) -> None:
    # given an async step of a 2 s timeout whose agent accepts and never calls back
    automation_id = make_graph(
        [
            {"key": "job", "message": "transcribe", "kind": "async", "timeout_s": 2},
            {"key": "use", "needs": ["job"], "message": "use"},
        ],
        agent_url=agent.url,
    )
    agent.responder = _async_responder
    with worker_in_process(threads=2):
        execution_id = _sent(automation_id)
        done = ended(execution_id, agent=agent)
    # then the step failed with the reason, the run with it, and nothing after it started
    assert done.status == "failed"
    assert done.error == "step job: no callback within the step's timeout (2 s)"
    job = _row_of(execution_id, "job")
    assert (job.status, job.error) == ("failed", "no callback within the step's timeout (2 s)")
    assert _row_of(execution_id, "use").status == "cancelled"
    (call,) = agent.calls_for(str(execution_id))
    # and a callback after the timeout changes nothing
    token = call.body["callback_url"].rsplit("/", 1)[1]
    with pytest.raises(WaitClosed):
        wait_service.callback(token, b'{"output": "late"}')
    assert _row_of(execution_id, "job").status == "failed"


# --- approvals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "step_status", "run_status", "approved"),
    [
        ({"on_timeout": "approve"}, "succeeded", "succeeded", True),
        ({"on_reject": "skip"}, "skipped", "succeeded", False),
        ({}, "failed", "failed", False),
    ],
)
def test_an_approval_nobody_decides_is_decided_by_its_on_timeout(
    db: None,
    redis_client: Any,
    agent: Any,
    policy: dict[str, str],
    step_status: str,
    run_status: str,
    approved: bool,
) -> None:
    # given an approval of a 1 s timeout before a step that publishes
    automation_id = make_graph(
        [
            {
                "key": "ok",
                "kind": "approval",
                "message": "Publish {{ input.title }}?",
                "timeout_s": 1,
                **policy,
            },
            {"key": "publish", "needs": ["ok"], "message": "publish"},
        ],
        agent_url=agent.url,
    )
    with worker_in_process(threads=2):
        execution_id = _sent(automation_id, input={"title": "Owls"})
        done = ended(execution_id, agent=agent)
    # then its timeout decided, as its policy says, and the decision is recorded
    assert done.status == run_status, done.error
    ok = _row_of(execution_id, "ok")
    assert ok.status == step_status
    assert ok.wait is not None
    assert ok.wait["message"] == "Publish Owls?" and ok.wait["role"] == "editor"
    decided = ok.wait["decided"]
    assert (decided["by"], decided["approved"], decided["comment"]) == ("timeout", approved, None)
    published = _arrivals(agent, execution_id, "publish")
    if approved:
        (call,) = published
        output = {"approved": True, "by": "timeout", "comment": None}
        assert call.body["steps"]["ok"]["output"] == output
    else:
        assert published == []
        assert ok.error == "rejected: no decision within the step's timeout (1 s)"
    if run_status == "failed":
        assert done.error == "step ok: rejected: no decision within the step's timeout (1 s)"


def test_a_retry_of_a_run_whose_approval_failed_asks_for_it_again(
    db: None, redis_client: Any, agent: Any
) -> None:
    # given a run failed by its approval's timeout (rejected, on_reject fail)
    steps: list[dict[str, Any]] = [
        {"key": "ok", "kind": "approval", "message": "go?", "timeout_s": 1},
        {"key": "publish", "needs": ["ok"], "message": "publish"},
    ]
    automation_id = make_graph(steps, agent_url=agent.url)
    with worker_in_process(threads=2):
        execution_id = _sent(automation_id)
        assert ended(execution_id, agent=agent).status == "failed"
        # when its approval is given a day and a person retries the run
        steps[0]["timeout_s"] = 86_400
        with session_scope() as session:
            session.execute(
                update(Automation).where(Automation.id == automation_id).values(steps=steps)
            )
        execution_service.retry(execution_id, actor=ADMIN)
        # then the approval is asked again: a new wait, the run parked on it
        _parked(execution_id)
        rows = [(r.status, r.attempt) for r in step_runs(execution_id) if r.step_key == "ok"]
        assert rows == [("failed", 1), ("waiting", 2)]
        # and a person's approval lets it end
        wait_service.decide(execution_id, "ok", approved=True, comment="go", actor=ADMIN)
        done = ended(execution_id, agent=agent)
    assert done.status == "succeeded", done.error
    (publish,) = agent.calls_for(str(execution_id))
    assert publish.body["steps"]["ok"]["output"] == {
        "approved": True,
        "by": ADMIN.name,
        "comment": "go",
    }


# --- cancel, overlap, claims, recovery -------------------------------------------------------


def test_a_parked_run_is_cancelled_with_its_waits(db: None, redis_client: Any, agent: Any) -> None:
    # given a run parked on an approval and a minute's sleep, side by side
    automation_id = make_graph(
        [
            {"key": "ok", "kind": "approval", "message": "go?"},
            {"key": "nap", "kind": "sleep", "sleep_s": 60},
            {"key": "after", "needs": ["ok", "nap"], "message": "after"},
        ],
        agent_url=agent.url,
    )
    with worker_in_process(threads=2):
        execution_id = _sent(automation_id)
        _parked(execution_id)
        # when a person cancels it
        execution_service.cancel(execution_id, actor=ADMIN)
    # then the run and its waits are cancelled
    done = execution(execution_id)
    assert (done.status, done.error) == ("cancelled", f"cancelled by {ADMIN.name}")
    why = "cancelled while it waited: the run was cancelled"
    assert {(r.step_key, r.status, r.error) for r in step_runs(execution_id)} == {
        ("ok", "cancelled", why),
        ("nap", "cancelled", why),
    }
    # and neither a decision nor its wake-up changes anything any more
    with pytest.raises(WaitClosed):
        wait_service.decide(execution_id, "ok", approved=True, actor=ADMIN)
    with session_scope() as session:
        assert claim_execution(session, execution_id, lease_s=5) == "nothing"
    assert execution(execution_id).status == "cancelled"
    assert agent.calls_for(str(execution_id)) == []


def _blocked_on_a_lock() -> int:
    """How many sessions of this database wait for a lock now."""
    with session_scope() as session:
        return int(
            session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
            )
            or 0
        )


def test_a_decision_during_a_park_waits_for_it_and_wakes_the_run(
    db: None, redis_client: Any
) -> None:
    # given a running run whose open steps all wait, its coordinator parking it (the run's
    # row locked, the transaction not committed yet)
    execution_id, ids = parked_run(status=ExecutionStatus.QUEUED)
    with session_scope() as session:
        (claim,) = claim_executions(session, [execution_id], lease_s=30)
    assert isinstance(claim, Claim)
    decided: dict[str, Any] = {}

    def decide() -> None:
        decided["wake"] = wait_service.decide(execution_id, "ok", approved=True, actor=ADMIN).wake

    with session_scope() as session:
        parked = runs.park(session, claim, list(ids.values()))
        assert parked is not None and parked.delay_ms is not None
        # when a person approves meanwhile
        thread = threading.Thread(target=decide)
        thread.start()
        # then the decision waits for the park (it locks the run's row first too)
        wait_for(lambda: _blocked_on_a_lock() >= 1, message="the decision to wait for the park")
    thread.join(10)
    # and once the park has committed, it finds the run parked and wakes it
    assert decided["wake"] is not None
    woken = execution(execution_id)
    assert woken.status == "waiting" and woken.available_at is not None
    assert woken.available_at <= now()
    assert _row_of(execution_id, "ok").status == "succeeded"


def test_a_decision_before_a_park_keeps_the_run_from_parking(db: None, redis_client: Any) -> None:
    # given a running run whose open steps all wait, and a decision on one of them
    execution_id, ids = parked_run(status=ExecutionStatus.QUEUED)
    with session_scope() as session:
        (claim,) = claim_executions(session, [execution_id], lease_s=30)
    assert isinstance(claim, Claim)
    resolution = wait_service.decide(execution_id, "ok", approved=False, actor=ADMIN)
    assert resolution.wake is None  # the run is running: its coordinator reads its waits
    # when its coordinator parks it
    with session_scope() as session:
        parked = runs.park(session, claim, list(ids.values()))
    # then it does not park: the decided wait is handed to it to take in
    assert parked is not None and parked.delay_ms is None
    assert [(row.id, row.status) for row in parked.moved] == [(ids["ok"], "failed")]
    assert execution(execution_id).status == "running"


def _parked_rows(automation_id: uuid.UUID, **parked: Any) -> dict[str, Any]:
    """A parked run's execution row, as `add_executions` takes it."""
    at = now() - timedelta(minutes=5)
    return {
        "trigger": "schedule",
        "scheduled_for": at,
        "queued_at": at,
        "status": "waiting",
        "attempt": 1,
        "started_at": at,
        "finished_at": None,
        "available_at": now() + timedelta(hours=1),
        **parked,
    }


def test_the_overlap_policy_sees_a_waiting_run_as_in_progress(db: None) -> None:
    # given a `skip` schedule and a `buffer_one` schedule, each with a run parked on a wait
    # and its next slot due
    automation_id = _napping_graph("http://127.0.0.1:9", sleep_s=60)
    due: list[uuid.UUID] = []
    for policy in ("skip", "buffer_one"):
        schedule_id = make_schedule(
            automation_id, kind="interval", interval_s=60, overlap_policy=policy
        )
        parked = _parked_rows(automation_id, schedule_id=schedule_id)
        slot = parked["scheduled_for"] + timedelta(seconds=60)
        following = {
            **parked,
            "scheduled_for": slot,
            "queued_at": slot,
            "status": "queued",
            "attempt": 0,
            "started_at": None,
            "available_at": slot,
        }
        due.append(add_executions(automation_id, [parked, following])[1])
    # when a group claim gets both next slots
    with session_scope() as session:
        results = claim_executions(session, due, lease_s=5)
    # then `skip` skipped its slot and `buffer_one` holds it, as behind a running run
    assert results == ["skipped", "waiting"]
    assert [execution(i).status for i in due] == ["skipped", "queued"]


def test_a_wake_claims_a_parked_run_only_at_its_time_and_keeps_its_attempt(db: None) -> None:
    # given a run parked on its second attempt, until an hour from now
    automation_id = _napping_graph("http://127.0.0.1:9", sleep_s=60)
    (parked,) = add_executions(automation_id, [_parked_rows(automation_id, trigger="manual")])
    with session_scope() as session:
        session.execute(update(Execution).where(Execution.id == parked).values(attempt=2))
    # then no claim takes it before its time, one by one or in a group
    with session_scope() as session:
        assert claim_execution(session, parked, lease_s=5) == "nothing"
        assert claim_executions(session, [parked], lease_s=5) == ["nothing"]
    # when its time comes
    with session_scope() as session:
        session.execute(
            update(Execution).where(Execution.id == parked).values(available_at=func.now())
        )
    with session_scope() as session:
        (claim,) = claim_executions(session, [parked], lease_s=5)
    # then the wake claims it, keeping its attempt: it spends no retry and no recovery
    assert isinstance(claim, Claim) and claim.attempt == 2
    woken = execution(parked)
    assert (woken.status, woken.attempt) == ("running", 2)
    assert woken.lease_expires_at is not None


def test_housekeeping_sends_a_parked_run_its_lost_wake_up_and_never_gives_it_up(
    db: None,
) -> None:
    # given a parked run whose wake-up time passed long ago, claimed many times before
    automation_id = _napping_graph("http://127.0.0.1:9", sleep_s=60)
    many = 3 + 1 + MAX_RECOVERIES + 2  # past any give-up bound of its retries
    lost = _parked_rows(
        automation_id, attempt=many, available_at=now() - timedelta(minutes=2), trigger="manual"
    )
    not_yet = _parked_rows(automation_id, trigger="manual")
    lost_id, later_id = add_executions(automation_id, [lost, not_yet])
    # when housekeeping looks for stranded runs
    with session_scope() as session:
        sent = stranded_executions(session, requeue_after_s=60, resend_after_s=10, limit=100)
    # then it sends the lost one again (its claims so far but the current one spent a try),
    # leaves the other to its own wake-up, and gives up on none
    assert [(m.execution_id, m.retries) for m in sent] == [(lost_id, many - 1)]
    assert execution(lost_id).status == "waiting" and execution(later_id).status == "waiting"


def test_rebuild_reads_a_wait_as_waiting_until_resolved_and_a_recent_failure_as_final() -> None:
    graph = graph_of(
        [
            {"key": "job", "message": "m", "kind": "async"},
            {"key": "ok", "message": "m", "kind": "approval"},
            {"key": "old", "message": "m", "kind": "approval"},
            {"key": "nap", "kind": "sleep", "sleep_s": 5},
        ]
    )

    def row(n: int, key: str, status: str, **more: Any) -> SimpleNamespace:
        base: dict[str, Any] = {"items": None, "response_body": None, "error": None}
        base |= {"wait": {}, "lately": False}
        return SimpleNamespace(id=n, step_key=key, item=None, status=status, **{**base, **more})

    rows = [
        row(1, "job", "waiting", past=False),
        row(2, "ok", "failed", error="rejected by ana", lately=True),
        row(3, "old", "failed", error="rejected before the retry", lately=False),
        row(4, "nap", "succeeded", response_body='{"slept_until": "2026-12-07T16:00:00+00:00"}'),
    ]
    found = rebuild(graph, rows)
    assert (found["job"].state, found["job"].wait_row) == (StepState.WAITING, 1)
    assert (found["ok"].state, found["ok"].reason) == (StepState.FAILED, "rejected by ana")
    assert found["old"].state is StepState.PENDING  # a person's retry asks again
    assert found["nap"].output == {"slept_until": "2026-12-07T16:00:00+00:00"}
