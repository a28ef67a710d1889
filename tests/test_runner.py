"""The runner: runs in flight beyond the thread count, hard deadlines, a kill -9.

Workers are real (an in-process Dramatiq Worker, or the Procfile's `worker`), the
agent a real HTTP server on loopback, the database and Redis the suite's own.
"""

from __future__ import annotations

import math
import signal
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from db.models import StepRun
from db.runs import Claim, RunMessage
from db.session import session_scope
from stepwise.demo_agent import Call, Reply
from tasks.send import send_run
from testkit.factories import (
    execution,
    make_automation,
    make_execution,
    make_schedule,
    step_runs,
)
from testkit.processes import READY, worker_in_process
from testkit.prometheus import metric
from testkit.waiting import wait_for


class Gate:
    """An agent responder that holds every call until `n` calls are at the agent at once
    (`full`), then lets them go, or, with `hold`, until `opened` is set."""

    def __init__(self, n: int, *, timeout_s: float = 60, hold: bool = False) -> None:
        self.n = n
        self.timeout_s = timeout_s
        self.hold = hold
        self.lock = threading.Lock()
        self.waiting = 0
        self.most = 0
        self.full = threading.Event()
        self.opened = threading.Event()

    def __call__(self, call: Call) -> Reply:
        with self.lock:
            self.waiting += 1
            self.most = max(self.most, self.waiting)
            if self.waiting >= self.n:
                self.full.set()
                if not self.hold:
                    self.opened.set()
        self.opened.wait(self.timeout_s)
        with self.lock:
            self.waiting -= 1
        return Reply(200, {"output": call.body.get("step_number")})


def test_runs_in_flight_are_not_bounded_by_threads(db: None, redis_client: Any, agent: Any) -> None:
    # given 300 runs and a worker with 2 Dramatiq threads
    gate = Gate(300)
    agent.responder = gate
    automation_id = make_automation(agent_url=agent.url, steps=2, max_retries=0, step_timeout_s=60)
    runs = [make_execution(automation_id) for _ in range(300)]
    with worker_in_process(threads=2):
        for execution_id in runs:
            send_run(RunMessage(execution_id, 0))
        # then all 300 first steps are at the agent at the same time
        assert gate.full.wait(60), f"only {gate.most} calls were in flight at once"
        # and every run then ends well
        wait_for(
            lambda: all(execution(r).status == "succeeded" for r in runs),
            timeout=60,
            message="all runs to succeed",
        )
    assert gate.most >= 300
    assert sum(len(agent.calls_for(str(r))) for r in runs) == 600


def test_a_slot_delivered_ahead_starts_at_its_slot_and_never_before(
    db: None, redis_client: Any, agent: Any
) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from db.models import Execution
    from db.runs import START_AHEAD_MS

    # given runs due in 3 s, their messages delivered a second ahead: five plain runs,
    # one of an overlap=skip schedule with nothing in its way, and one of a skip schedule
    # whose previous slot's run is still running
    automation_id = make_automation(agent_url=agent.url, steps=1, max_retries=0)
    plain = [make_execution(automation_id) for _ in range(5)]
    schedule_id = make_schedule(automation_id, overlap_policy="skip")
    policed = make_execution(automation_id, schedule_id=schedule_id, trigger="schedule")
    busy_schedule = make_schedule(automation_id, overlap_policy="skip")
    previous = make_execution(automation_id, schedule_id=busy_schedule, trigger="schedule")
    contested = make_execution(automation_id, schedule_id=busy_schedule, trigger="schedule")
    runs = [*plain, policed, contested]
    with worker_in_process(threads=4):
        slot = datetime.now(UTC) + timedelta(seconds=3)
        with session_scope() as session:
            session.execute(
                update(Execution).where(Execution.id.in_(runs)).values(available_at=slot)
            )
            session.execute(
                update(Execution)
                .where(Execution.id.in_([policed, contested]))
                .values(scheduled_for=slot)
            )
            session.execute(
                update(Execution)
                .where(Execution.id == previous)
                .values(
                    scheduled_for=slot - timedelta(minutes=1),
                    status="running",
                    attempt=1,
                    lease_expires_at=slot + timedelta(hours=1),
                )
            )
        for execution_id in runs:
            delay_ms = math.ceil((slot.timestamp() - time.time()) * 1000)
            send_run(RunMessage(execution_id, 0, delay_ms=delay_ms, ahead_ms=START_AHEAD_MS))
        # then before the slot the plain runs and the uncontested one are claimed, the
        # one whose previous run still runs is not, and nothing is at the agent
        wait_for(
            lambda: all(execution(r).status == "running" for r in [*plain, policed]),
            timeout=slot.timestamp() - time.time() - 0.1,
            message="the runs nothing stands in the way of to be claimed ahead of their slot",
        )
        assert execution(contested).status == "queued"
        assert not any(agent.calls_for(str(r)) for r in runs)
        wait_for(
            lambda: all(execution(r).status == "succeeded" for r in [*plain, policed]),
            timeout=30,
            message="the runs to succeed",
        )
        wait_for(
            lambda: execution(contested).status == "skipped",
            timeout=30,
            message="the slot whose previous run still runs to be skipped at its slot",
        )
    # and every call came at the slot or after it, started at the slot
    arrivals = [call.at for r in runs for call in agent.calls_for(str(r))]
    assert len(arrivals) == len(plain) + 1
    assert min(arrivals) >= slot.timestamp()
    assert {execution(r).started_at for r in [*plain, policed]} == {slot}
    assert "still running" in (execution(contested).error or "")


def test_a_worker_whose_threads_all_wait_hands_the_early_message_back() -> None:
    from core.settings import get_settings
    from tasks.runner import Runner
    from tasks.signals import shutting_down

    shutting_down.clear()  # as at a worker's boot (an earlier test's worker stopped)

    # given a runner whose two threads may let one wait for a slot
    settings = get_settings().model_copy(update={"worker_threads": 2})
    sent: list[RunMessage] = []
    runner = Runner(settings, sent.append)
    try:
        start_at = int(time.time() * 1000) + 800
        waited = threading.Thread(target=runner.gate.wait_for, args=(start_at,))
        waited.start()
        time.sleep(0.1)
        # when a second early message arrives, it is not held: the caller hands it back
        began = time.monotonic()
        assert runner.gate.wait_for(start_at) is False
        assert time.monotonic() - began < 0.1
        # and a message already due waits for nothing
        assert runner.gate.wait_for(int(time.time() * 1000) - 5) is True
        waited.join()
    finally:
        runner.close()


def test_an_urgent_automations_run_is_not_queued_behind_a_burst(
    db: None, redis_client: Any, agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.settings import get_settings
    from tasks.lifecycle import stop_runner
    from tasks.send import send_runs

    # given a worker holding 10 runs at once, and a backlog of 150 runs of an automation
    # whose agent takes 0.3 s a step
    monkeypatch.setenv("STEPWISE_WORKER_IN_FLIGHT", "10")
    get_settings.cache_clear()
    stop_runner()
    agent.responder = lambda call: Reply(200, {"output": 1}, delay_s=0.3)
    slow = make_automation(agent_url=agent.url, steps=1, max_retries=0)
    urgent = make_automation(agent_url=agent.url, steps=1, max_retries=0, urgent=True)
    backlog = [make_execution(slow) for _ in range(150)]
    try:
        with worker_in_process(threads=2):
            send_runs([RunMessage(r, 0) for r in backlog])
            wait_for(lambda: len(agent.calls) >= 10, timeout=30, message="the runner to fill")
            # when a run of an urgent automation is sent behind the backlog
            run = make_execution(urgent)
            send_run(RunMessage(run, 0, urgent=True))
            wait_for(
                lambda: all(execution(r).status == "succeeded" for r in [*backlog, run]),
                timeout=90,
                message="every run to succeed",
            )
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        stop_runner()
    # then it reached the agent ahead of most of the backlog, not after it
    order = [call.body["execution_id"] for call in sorted(agent.calls, key=lambda c: c.at)]
    assert len(order) == 151
    assert order.index(str(run)) < 50, f"the urgent run was call {order.index(str(run)) + 1}"


def test_an_urgent_run_takes_a_reserved_slot_when_the_runner_is_full() -> None:
    from core.settings import get_settings
    from tasks.runner import Runner
    from tasks.signals import shutting_down

    shutting_down.clear()  # as at a worker's boot (an earlier test's worker stopped)

    # given a runner whose 10 slots are all taken
    settings = get_settings().model_copy(update={"worker_in_flight": 10})
    runner = Runner(settings, lambda message: None)
    try:
        taken = [runner.gate.take_slot() for _ in range(10)]
        assert all(slot is runner.gate.slots for slot in taken)
        # when an urgent run arrives, it gets the reserve at once
        began = time.monotonic()
        assert runner.gate.take_slot(urgent=True) is runner.gate.reserve
        assert time.monotonic() - began < 1
        # and once a slot is given back, the next run takes it
        runner.gate.slots.release()
        assert runner.gate.take_slot() is runner.gate.slots
    finally:
        runner.close()


def test_a_trickling_agent_is_cut_off_at_the_step_deadline(worker: Any, agent: Any) -> None:
    # given an agent that answers one byte every half second (never done within 2 s)
    agent.responder = lambda call: Reply(200, {"output": "x" * 200}, trickle_s=0.5)
    automation_id = make_automation(agent_url=agent.url, steps=1, max_retries=0, step_timeout_s=2)
    execution_id = make_execution(automation_id)
    started = time.monotonic()
    send_run(RunMessage(execution_id, 0))
    # then the run fails at its deadline with a timeout, not when the agent is done
    wait_for(lambda: execution(execution_id).status == "failed", timeout=20, message="failed")
    assert time.monotonic() - started < 15  # the agent would need ~100 s to finish
    [step] = step_runs(execution_id)
    assert "timed out after 2 s" in (step.error or "")
    # and the agent was called once: no second call was started while the first was alive
    time.sleep(12)  # longer than a lease in the tests (STEPWISE_LEASE_S=10)
    assert len(agent.calls_for(str(execution_id))) == 1


@pytest.mark.slow
def test_a_killed_worker_holding_300_runs_loses_none_and_repeats_none(
    procs: Any, agent: Any
) -> None:
    # given a worker process holding 300 runs, each at the agent with its first step
    gate = Gate(300, timeout_s=120, hold=True)
    first_calls: dict[str, float] = {}
    lock = threading.Lock()

    def responder(call: Call) -> Reply:
        with lock:
            first_calls.setdefault(str(call.idempotency_key), time.monotonic())
        if not gate.opened.is_set():
            return gate(call)
        return Reply(200, {"output": call.body.get("step_number")})

    agent.responder = responder
    automation_id = make_automation(agent_url=agent.url, steps=2, max_retries=2, step_timeout_s=120)
    runs = [make_execution(automation_id) for _ in range(300)]
    procs.start("worker", STEPWISE_WORKER_THREADS="2")
    procs.wait_ready("worker", READY)
    for execution_id in runs:
        send_run(RunMessage(execution_id, 2))
    assert gate.full.wait(60), f"only {gate.most} calls were in flight at once"
    # when it is killed (SIGKILL: no goodbye) and another worker starts
    procs.signal("worker", signal.SIGKILL)
    killed_at = time.monotonic()
    gate.opened.set()  # the agent lets go of the dead worker's calls
    procs.stop("worker")
    procs.start("worker", as_name="worker2", STEPWISE_WORKER_THREADS="2")
    # then every run finishes
    wait_for(
        lambda: all(execution(r).status == "succeeded" for r in runs),
        timeout=120,
        interval=0.5,
        message="all 300 runs to succeed",
        details=lambda: (
            f"{Counter(execution(r).status for r in runs)}\n{procs.log('worker2')[-3000:]}"
        ),
    )
    # and no step succeeded twice
    with session_scope() as session:
        done = Counter(
            session.execute(
                select(StepRun.execution_id, StepRun.step_number).where(
                    StepRun.execution_id.in_(runs), StepRun.status == "succeeded"
                )
            ).all()
        )
    assert set(done.values()) == {1} and len(done) == 600
    # and the last run restarted (its step 2 first reached the agent) within 60 s
    restarted = [first_calls[f"{r}:2"] - killed_at for r in runs]
    assert max(restarted) < 60, max(restarted)


class Meter:
    """An agent responder that answers after `delay_s` and records calls in flight."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.arrivals: list[float] = []

    def __call__(self, call: Call) -> Reply:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.arrivals.append(time.monotonic())
        time.sleep(self.delay_s)
        with self.lock:
            self.now -= 1
        return Reply(200, {"output": "ok"})


def _all_succeed(runs: list[Any], timeout: float) -> None:
    wait_for(
        lambda: all(execution(r).status == "succeeded" for r in runs),
        timeout=timeout,
        interval=0.5,
        message="every run to succeed",
        details=lambda: str(Counter(execution(r).status for r in runs)),
    )


@pytest.mark.timeout(180)
def test_a_concurrency_limit_holds_under_a_burst_and_spends_no_retry(
    db: None, redis_client: Any, agent: Any
) -> None:
    # given an automation allowing 5 calls at once, and a burst of 200 runs
    meter = Meter(delay_s=0.2)
    agent.responder = meter
    automation_id = make_automation(
        agent_url=agent.url, steps=1, max_retries=0, concurrency_limit=5
    )
    runs = [make_execution(automation_id) for _ in range(200)]
    waits = metric("stepwise_flow_control_waits_total", limit="concurrency")
    with worker_in_process(threads=4):
        for execution_id in runs:
            send_run(RunMessage(execution_id, 0))
        _all_succeed(runs, timeout=150)
    # then the agent never had more than 5 of them at once, and did have 5
    assert meter.most == 5
    # and the calls that waited for a permit were counted (all but the first 5, at least)
    assert metric("stepwise_flow_control_waits_total", limit="concurrency") - waits >= 195
    # and waiting spent no retry and called nothing twice: one attempt, one call each
    assert len(meter.arrivals) == 200
    assert {execution(r).attempt for r in runs} == {1}


@pytest.mark.timeout(120)
def test_a_rate_limit_spaces_the_calls_at_the_agent(
    db: None, redis_client: Any, agent: Any
) -> None:
    # given an automation allowed 5 calls per second, and 25 runs due at once
    meter = Meter(delay_s=0)
    agent.responder = meter
    automation_id = make_automation(agent_url=agent.url, steps=1, max_retries=0, rate_limit_per_s=5)
    runs = [make_execution(automation_id) for _ in range(25)]
    with worker_in_process(threads=4):
        for execution_id in runs:
            send_run(RunMessage(execution_id, 0))
        _all_succeed(runs, timeout=90)
    # then no second at the agent saw more than 5 arrivals (50 ms for the network)
    arrivals = sorted(meter.arrivals)
    assert len(arrivals) == 25
    for n, at in enumerate(arrivals):
        within = [a for a in arrivals[n:] if a - at < 0.95]
        assert len(within) <= 5, f"{len(within)} calls within a second from call {n}"
    # and so the 25 calls took at least 4 s
    assert arrivals[-1] - arrivals[0] >= 3.9


def test_a_renewal_drops_only_the_runs_it_asked_about_and_lost() -> None:
    from tasks.flight import Flight
    from tasks.leases import lost_flights

    def flight(execution_id: uuid.UUID, attempt: int = 1) -> Flight:
        claim = Claim(
            execution_id=execution_id,
            attempt=attempt,
            workspace_id=uuid.uuid4(),
            automation_id=uuid.uuid4(),
            schedule_id=None,
            scheduled_for=datetime.now(UTC),
            owner_id="local",
            agent_url="http://127.0.0.1:9/agent",
            signing_secret=None,
            steps=[{"name": "s", "message": "m"}],
            project_context="",
            step_timeout_s=5,
            first_step=1,
            previous_output=None,
        )
        return Flight(claim, retries=0, max_retries=0)

    kept_run, cancelled_run, claimed_meanwhile = (flight(uuid.uuid4()) for _ in range(3))
    asked = [(f.claim.execution_id, 1) for f in (kept_run, cancelled_run)]
    flights = [kept_run, cancelled_run, claimed_meanwhile]
    # a run the renewal asked about and did not get back is lost; one claimed while the
    # renewal ran was not asked about and is kept (it was dropped before: a bug)
    assert lost_flights(flights, asked, {kept_run.claim.execution_id}, expired=False) == [
        cancelled_run
    ]
    # a failed renewal drops everything, but only once the local lease ran out
    assert lost_flights(flights, asked, None, expired=False) == []
    assert lost_flights(flights, asked, None, expired=True) == flights
