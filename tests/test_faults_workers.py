"""Fault tests on the workers: SIGKILL (2) and SIGTERM (9) mid-step, overlap (6), load (11).

Workers are the Procfile's real `worker` processes (tests/procs.py) except for the
overlap test, which needs a precise thread count and uses an in-process Worker.
Housekeeping is driven by calling `tasks.periodic.recover_stranded` as the
scheduler's minute tick would, so recovery takes seconds instead of a minute.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from core.errors import InvalidState
from db import executions as stored_executions
from db.models import Execution, Schedule, StepRun
from db.runs import LOST_STEP_ERROR, RunMessage
from db.session import db_now, session_scope
from service.executions import cancel
from stepwise.demo_agent import Call, Reply
from tasks import periodic
from tasks.send import send_run
from testkit.factories import (
    ADMIN,
    execution,
    executions_of,
    make_automation,
    make_execution,
    make_schedule,
    person,
    step_runs,
)
from testkit.processes import group_alive, worker_in_process
from testkit.waiting import wait_for

pytestmark = pytest.mark.slow
READY = "Worker process is ready for action"


def _keys(agent: Any, execution_id: uuid.UUID) -> list[str]:
    return [c.idempotency_key for c in agent.calls_for(str(execution_id))]


def _slow_step_two(agent: Any, delay_s: float) -> None:
    """Step 2's first call hangs for `delay_s`; every other call answers at once."""
    seen: set[str] = set()

    def responder(call: Call) -> Reply:
        key = call.idempotency_key or ""
        first = key not in seen
        seen.add(key)
        step = key.rsplit(":", 1)[-1]
        return Reply(
            200, {"output": f"step {step}"}, delay_s=delay_s if first and step == "2" else 0
        )

    agent.responder = responder


def _open_step_runs() -> int:
    with session_scope() as session:
        return len(session.scalars(select(StepRun.id).where(StepRun.status == "running")).all())


def test_a_worker_killed_mid_step_is_recovered_without_repeating_done_steps(
    procs: Any, agent: Any
) -> None:
    # given a worker process running a 3-step execution whose step 2 hangs at the agent
    _slow_step_two(agent, delay_s=10)
    automation_id = make_automation(agent_url=agent.url, steps=3, step_timeout_s=3)
    procs.start("worker")
    procs.wait_ready("worker", READY)
    execution_id = make_execution(automation_id)
    send_run(RunMessage(execution_id, 3))
    wait_for(
        lambda: len(_keys(agent, execution_id)) == 2,
        message="step 2 in flight",
        details=lambda: f"{vars(execution(execution_id))}\n{procs.log('worker')[-3000:]}",
    )
    # when the worker is SIGKILLed while step 2 is in flight
    procs.kill("worker")
    killed_at = time.monotonic()
    stuck = execution(execution_id)
    assert (stuck.status, stuck.current_step) == ("running", 2)
    # and a new worker starts while housekeeping runs (every second here)
    procs.start("worker", as_name="worker2")
    procs.wait_ready("worker2", READY)
    wait_for(
        lambda: (
            periodic.recover_stranded(send_run) >= 0
            and execution(execution_id).status == "succeeded"
        ),
        timeout=60,
        interval=1,
        message="the execution to be recovered and succeed",
    )
    recovery_s = time.monotonic() - killed_at
    # then it resumed at step 2: step 1 was called once, step 2 again with the same key
    keys = _keys(agent, execution_id)
    assert keys == [f"{execution_id}:{n}" for n in (1, 2, 2, 3)]
    # and each step succeeded exactly once; the lost try is recorded as such
    runs = [(r.step_number, r.attempt, r.status, r.error) for r in step_runs(execution_id)]
    assert runs == [
        (1, 1, "succeeded", None),
        (2, 1, "failed", LOST_STEP_ERROR),
        (2, 2, "succeeded", None),
        (3, 2, "succeeded", None),
    ]
    done = execution(execution_id)
    assert done.attempt == 2 and done.lease_expires_at is None
    assert _open_step_runs() == 0
    # the lease (3 s step timeout + 5 s margin) bounds the recovery time
    assert recovery_s < 30, recovery_s
    print(f"\nSIGKILL recovery: {recovery_s:.1f} s after the kill")


def test_sigterm_mid_step_finishes_the_step_and_hands_the_run_back(procs: Any, agent: Any) -> None:
    # given a worker process running a 3-step execution whose step 2 takes 3 s
    _slow_step_two(agent, delay_s=3)
    automation_id = make_automation(agent_url=agent.url, steps=3, step_timeout_s=10)
    worker = procs.start("worker")
    procs.wait_ready("worker", READY)
    execution_id = make_execution(automation_id)
    send_run(RunMessage(execution_id, 3))
    wait_for(lambda: len(_keys(agent, execution_id)) == 2, message="step 2 in flight")
    # when the process group gets SIGTERM (as honcho and Heroku send it) mid-step
    signalled_at = time.monotonic()
    procs.signal("worker", signal.SIGTERM)
    wait_for(lambda: not group_alive(worker.pid), timeout=35, message="the worker to exit")
    exit_s = time.monotonic() - signalled_at
    # then every process exited within the 30 s grace time, after the step ended, cleanly
    # (measured from step 2's arrival at the agent, which answers 3 s later: the signal
    # itself may leave a loaded machine's test process well after that arrival)
    log = procs.log("worker")
    step_two_for_s = time.time() - agent.calls_for(str(execution_id))[1].at
    assert step_two_for_s >= 3.0 and exit_s < 30, (step_two_for_s, exit_s, log[-3000:])
    # (A worker process killed would log "Killing worker process"; the metrics' fork
    # process may log "Killing fork process" when the group's SIGTERM and the one Dramatiq
    # forwards reach it before it exits: it serves only /metrics, and dies either way.)
    assert "Worker has been shut down" in log and "Killing worker" not in log, log[-3000:]
    # and nothing is half-written: step 2 succeeded, step 3 never started, the run is queued
    runs = [(r.step_number, r.status) for r in step_runs(execution_id)]
    assert runs == [(1, "succeeded"), (2, "succeeded")]
    handed_back = execution(execution_id)
    assert handed_back.status == "queued" and handed_back.lease_expires_at is None
    assert _keys(agent, execution_id) == [f"{execution_id}:1", f"{execution_id}:2"]
    # when a worker comes back, the run's retry message resumes it at step 3
    procs.start("worker", as_name="worker2")
    wait_for(
        lambda: execution(execution_id).status == "succeeded",
        timeout=30,
        message="the execution to resume and succeed",
    )
    assert _keys(agent, execution_id) == [f"{execution_id}:{n}" for n in (1, 2, 3)]
    assert _open_step_runs() == 0
    print(f"\nSIGTERM: worker exited {exit_s:.1f} s after the signal")


# --- 6. overlap ------------------------------------------------------------------------

RUN_S = 23  # one run outlasts two 10 s intervals


@pytest.fixture
def wide_worker(db: None, redis_client: Any) -> Iterator[Any]:
    """An in-process Worker with enough threads for every overlapping run at once."""
    with worker_in_process(threads=8, stop_timeout_ms=30_000) as running:
        yield running


@pytest.mark.timeout(180)
def test_overlap_policies_with_a_run_longer_than_two_intervals(
    wide_worker: Any, agent: Any
) -> None:
    # given an agent that takes 23 s per run and three schedules every 10 s (3 slots each)
    agent.responder = lambda call: Reply(200, {"output": "slow"}, delay_s=RUN_S)
    with session_scope() as session:
        start = db_now(session).replace(microsecond=0) + timedelta(seconds=3)
    schedules = {}
    for policy in ("skip", "buffer_one", "allow"):
        automation_id = make_automation(agent_url=agent.url, steps=1, step_timeout_s=60)
        schedules[policy] = make_schedule(
            automation_id,
            kind="interval",
            interval_s=10,
            start_at=start,
            end_at=start + timedelta(seconds=20),
            overlap_policy=policy,
        )
    # when the dispatcher runs (its horizon covers all three slots)
    assert periodic.dispatch_due(send_run) == 9

    def settled() -> bool:
        rows = [r for sid in schedules.values() for r in executions_of(sid)]
        return all(r.status in ("succeeded", "skipped") for r in rows)

    wait_for(settled, timeout=120, interval=0.5, message="every slot to settle")
    rows = {policy: executions_of(sid) for policy, sid in schedules.items()}
    outcome = {p: [r.status for r in rs] for p, rs in rows.items()}
    # then skip: the two slots due while the first run ran are recorded as skipped
    assert outcome["skip"] == ["succeeded", "skipped", "skipped"]
    # buffer_one: the first slot due meanwhile waits and runs right after; the next is skipped
    assert outcome["buffer_one"] == ["succeeded", "succeeded", "skipped"]
    first, buffered, _ = rows["buffer_one"]
    assert first.finished_at is not None and buffered.started_at is not None
    assert buffered.started_at >= first.finished_at
    assert (buffered.started_at - first.finished_at).total_seconds() < 2
    # allow: all three ran, overlapping
    assert outcome["allow"] == ["succeeded"] * 3
    a0, a1, a2 = rows["allow"]
    assert a0.finished_at is not None and a1.started_at is not None and a2.started_at is not None
    assert a1.started_at < a0.finished_at and a2.started_at < a0.finished_at
    # and every overlap skip is visible: its reason on the row, counted on the schedule
    skipped = [r for rs in rows.values() for r in rs if r.status == "skipped"]
    assert {r.error for r in skipped} == {
        "skipped: the previous run was still running (overlap policy)"
    }
    with session_scope() as session:
        counts = {
            p: (s.skipped_count, s.success_count)
            for p, sid in schedules.items()
            if (s := session.get(Schedule, sid)) is not None
        }
    assert counts == {"skip": (2, 1), "buffer_one": (1, 2), "allow": (0, 3)}
    assert len(agent.calls) == 1 + 2 + 3


# --- 11. load ------------------------------------------------------------------------

LOAD = 1000


def _dashboard_reads(stop: threading.Event, errors: list[BaseException], done: list[int]) -> None:
    """What the dashboard's pages ask, in a loop, while the workers write."""
    from db import figures, queries

    while not stop.is_set():
        try:
            with session_scope() as session:
                now = db_now(session)
                queries.list_executions(session, queries.ExecutionFilters(), limit=50, actor=ADMIN)
                queries.list_executions(
                    session,
                    queries.ExecutionFilters(statuses=("running", "queued")),
                    limit=50,
                    actor=ADMIN,
                )
                queries.count_executions(session, queries.ExecutionFilters(), actor=ADMIN)
                figures.kpis(session, actor=ADMIN)
                figures.outcome_series(
                    session, since=now - timedelta(days=1), bucket="hour", actor=ADMIN
                )
                queries.recent_failures(session, actor=ADMIN)
                figures.scheduler_liveness(session)
            done.append(1)
        except BaseException as exc:  # reported by the test
            errors.append(exc)
            return


@pytest.mark.timeout(420)
def test_load_1000_executions_through_two_worker_processes(procs: Any, agent: Any) -> None:
    # given two worker processes and 1,000 queued two-step executions
    for n in (1, 2):
        procs.start("worker", as_name=f"worker{n}", STEPWISE_WORKER_THREADS="8")
    automation_id = make_automation(agent_url=agent.url, steps=2, step_timeout_s=30)
    with session_scope() as session:
        ids = [
            stored_executions.create_manual_execution(
                session, automation_id, actor=person("load")
            ).id
            for _ in range(LOAD)
        ]
    for n in (1, 2):
        procs.wait_ready(f"worker{n}", READY)
    # when they all run while the dashboard's queries run and a person cancels some
    stop, errors, reads = threading.Event(), [], []
    readers = [
        threading.Thread(target=_dashboard_reads, args=(stop, errors, reads)) for _ in range(2)
    ]
    for reader in readers:
        reader.start()
    began = time.monotonic()
    for execution_id in ids:
        send_run(RunMessage(execution_id, 3))
    cancelled = set(ids[100:1000:50])  # 18, some queued, some already running
    for execution_id in cancelled:
        with contextlib.suppress(InvalidState):
            cancel(execution_id, actor=person("load"))

    def unfinished() -> int:
        with session_scope() as session:
            return int(
                session.scalar(
                    select(func.count()).where(
                        Execution.id.in_(ids), Execution.status.in_(("queued", "running"))
                    )
                )
                or 0
            )

    wait_for(lambda: unfinished() == 0, timeout=300, interval=1, message="every run to end")
    elapsed = time.monotonic() - began
    stop.set()
    for reader in readers:
        reader.join(30)
    # then every execution is final: succeeded, or cancelled by the person
    with session_scope() as session:
        statuses = Counter(session.scalars(select(Execution.status).where(Execution.id.in_(ids))))
        cancelled_rows = set(
            session.scalars(
                select(Execution.id).where(Execution.id.in_(ids), Execution.status == "cancelled")
            )
        )
    assert statuses["succeeded"] + statuses["cancelled"] == LOAD, statuses
    assert cancelled_rows <= cancelled
    # and no query failed, no deadlock, no error anywhere in the workers' logs
    assert errors == []
    assert reads, "the dashboard queries never completed a round"
    for n in (1, 2):
        log = procs.log(f"worker{n}")
        for marker in ("ERROR", "CRITICAL", "Traceback", "deadlock"):
            assert marker not in log, log[log.find(marker) - 2000 : log.find(marker) + 2000]
    # and each succeeded execution called each step exactly once
    keys = Counter(c.idempotency_key for c in agent.calls)
    assert set(keys.values()) == {1}
    print(
        f"\nload: {LOAD} executions final in {elapsed:.0f} s ({LOAD / elapsed:.0f}/s), "
        f"{dict(statuses)}, {len(reads)} rounds of dashboard queries alongside"
    )
