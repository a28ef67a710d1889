"""What a person does to a live schedule or run: pause, resume, edit, delete, cancel.

Each test drives the real dispatcher (`tasks.periodic.dispatch_due`), the real
recovery pass (`tasks.periodic.recover_stranded`) and an in-process dramatiq Worker on
the real Redis, against the real agent server, on the real clock: a slot is an
instant of the database's `now()`, and a run starts when its message is due.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from core.schedule import ScheduleInput
from core.timing import ScheduleSpec, parse_timing, slots_between, spec_of
from core.vocabulary import ExecutionStatus, StepStatus
from db import automations, schedules
from db.claims import claim_execution
from db.models import Execution, Schedule, StepRun
from db.runs import CANCELLED_STEP_ERROR, RunMessage, start_step
from db.session import session_scope
from service.executions import cancel
from stepwise.demo_agent import Call, Reply
from tasks import periodic, queues
from tasks.send import send_run
from testkit.factories import (
    ADMIN,
    execution,
    executions_of,
    fetch,
    make_automation,
    make_execution,
    make_schedule,
    now,
    schedule_definition,
    step_runs,
)
from testkit.waiting import wait_for

INTERVAL = timedelta(seconds=10)
FINAL = (
    ExecutionStatus.SUCCEEDED,
    ExecutionStatus.FAILED,
    ExecutionStatus.CANCELLED,
    ExecutionStatus.SKIPPED,
)


def _every_10s(agent: Any, *, slots: int, lead_s: float = 2, **policies: Any) -> uuid.UUID:
    """A one-step schedule every 10 s whose first slot is `lead_s` from now, `slots` in all."""
    start = now() + timedelta(seconds=lead_s)
    automation_id = make_automation(agent_url=agent.url, steps=1, step_timeout_s=30)
    return make_schedule(
        automation_id,
        kind="interval",
        interval_s=10,
        start_at=start,
        end_at=start + INTERVAL * (slots - 1),
        **policies,
    )


def _slots(schedule_id: uuid.UUID) -> list[datetime]:
    """Every slot of the schedule, computed from its definition (not read back)."""
    row = fetch(Schedule, schedule_id)
    assert row.start_at is not None and row.end_at is not None
    return list(slots_between(parse_timing(spec_of(row)), row.start_at, row.end_at + INTERVAL))


def _calls_by_slot(agent: Any) -> Counter[str]:
    return Counter(c.body["scheduled_for"] for c in agent.calls if isinstance(c.body, dict))


def _settled(schedule_id: uuid.UUID) -> bool:
    rows = executions_of(schedule_id)
    return bool(rows) and all(r.status in FINAL for r in rows)


def _sleep_until(instant: datetime) -> None:
    time.sleep(max(0.0, (instant - now()).total_seconds()))


def _pause(schedule_id: uuid.UUID, enabled: bool) -> None:
    with session_scope() as session:
        if enabled:
            schedules.resume_schedule(session, schedule_id, actor=ADMIN)
        else:
            schedules.pause_schedule(session, schedule_id, actor=ADMIN)


def _assert_counters_match_rows(schedule_id: uuid.UUID) -> None:
    """The schedule's counters say exactly what its execution rows say."""
    rows = executions_of(schedule_id)
    statuses = Counter(r.status for r in rows)
    schedule = fetch(Schedule, schedule_id)
    assert schedule.dispatched_count == len(rows)  # no misfire rows in these tests
    assert schedule.run_count == statuses["succeeded"] + statuses["failed"]
    assert schedule.success_count == statuses["succeeded"]
    assert schedule.failure_count == statuses["failed"]
    assert schedule.skipped_count == statuses["skipped"]


# --- 1. pause, resume and edit inside the dispatch horizon ----------------------------


@pytest.mark.timeout(120)
def test_a_pause_inside_the_horizon_loses_no_slot_after_the_resume(worker: Any, agent: Any) -> None:
    # given a schedule every 10 s with four slots, all dispatched at once (horizon 90 s)
    schedule_id = _every_10s(agent, slots=4)
    s0, s1, s2, s3 = _slots(schedule_id)
    assert periodic.dispatch_due(send_run) == 4
    wait_for(lambda: _calls_by_slot(agent)[s0.isoformat()] == 1, message="the first slot to run")
    # when it is paused after the first slot and resumed after the second
    _pause(schedule_id, False)
    _sleep_until(s1 + timedelta(seconds=1))
    _pause(schedule_id, True)
    resent = periodic.dispatch_due(send_run)
    wait_for(lambda: _settled(schedule_id) and now() > s3, timeout=40, message="the last slot")
    time.sleep(1)  # any message of the first dispatch left in Redis has come due
    # then the tick after the resume sent the two slots after it
    assert resent == 2
    # and every slot after the resume ran exactly once; the paused one never did
    calls = _calls_by_slot(agent)
    assert [calls[s.isoformat()] for s in (s0, s1, s2, s3)] == [1, 0, 1, 1]
    rows = {r.scheduled_for: r for r in executions_of(schedule_id)}
    assert [rows[s].status for s in (s0, s2, s3)] == ["succeeded"] * 3
    assert s1 not in rows or rows[s1].started_at is None
    # and the counters are exact: three runs dispatched, three succeeded
    _assert_counters_match_rows(schedule_id)
    assert fetch(Schedule, schedule_id).dispatched_count == 3


def test_an_edit_keeps_the_slots_of_the_new_timing_and_drops_the_others(
    db: None, redis_client: Any
) -> None:
    # given a schedule every 10 s, dispatched (nine slots within the 90 s horizon)
    automation_id = make_automation(steps=1)
    schedule_id = make_schedule(automation_id, kind="interval", interval_s=10)
    first = periodic.dispatch_due(send_run)
    assert first >= 9

    def edit(interval_s: int, misfire: str) -> int:
        spec = ScheduleSpec(kind="interval", interval_s=interval_s)
        data = schedule_definition(ScheduleInput(spec=spec, misfire_policy=misfire))
        with session_scope() as session:
            schedules.update_schedule(session, schedule_id, data, actor=ADMIN)
        return periodic.dispatch_due(send_run)

    def open_slots() -> list[datetime]:
        return [r.scheduled_for for r in executions_of(schedule_id) if r.status == "queued"]

    before = open_slots()
    # when only its misfire policy changes
    resent = edit(10, "skip")
    # then every slot still ahead is queued again, once, and dispatched once
    assert resent >= len(before) - 1  # the slot that came due meanwhile kept its run
    assert open_slots() == before
    assert [r.status for r in executions_of(schedule_id)] == ["queued"] * len(before)
    assert fetch(Schedule, schedule_id).dispatched_count == len(before)
    # when its interval doubles
    edit(20, "skip")
    # then a slot the edit removed has no run left; the new timing's slots have one each
    row = fetch(Schedule, schedule_id)
    timing = parse_timing(spec_of(row))
    edited_at = now()
    ahead = [s for s in open_slots() if s > edited_at]
    assert ahead and ahead == list(slots_between(timing, ahead[0], ahead[-1] + INTERVAL))
    assert all(r.status == "queued" for r in executions_of(schedule_id))
    assert row.dispatched_count == len(open_slots())


# --- 2. delete stops what runs ---------------------------------------------------------


def _stuck_mid_step(execution_id: uuid.UUID) -> None:
    """What a worker SIGKILLed during step 1 leaves behind: running, its lease run out."""
    with session_scope() as session:
        claim = claim_execution(session, execution_id, lease_s=5)
        assert not isinstance(claim, str)
        assert start_step(session, claim, 1, {}, lease_s=5) is not None
    with session_scope() as session:
        past = now() - timedelta(minutes=5)
        session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(lease_expires_at=past, available_at=past)
        )


@pytest.mark.timeout(60)
def test_deleting_an_automation_stops_its_runs_in_flight(worker: Any, agent: Any) -> None:
    # given a three-step automation with one run at the agent (step 1 takes 3 s)
    agent.responder = lambda call: Reply(200, {"output": "ok"}, delay_s=3)
    automation_id = make_automation(agent_url=agent.url, steps=3, step_timeout_s=10)
    live = make_execution(automation_id)
    send_run(RunMessage(live, 3))
    wait_for(lambda: len(agent.calls) == 1, message="step 1 at the agent")
    # and one run whose worker was killed mid-step (lease expired, not yet taken over)
    orphan = make_execution(automation_id)
    _stuck_mid_step(orphan)
    # when the automation is deleted
    with session_scope() as session:
        automations.delete_automation(session, automation_id, actor=ADMIN)
    # and housekeeping then looks for stranded runs, while the live step's answer comes back
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        periodic.recover_stranded(send_run)
        time.sleep(0.5)
    # then no agent call of the automation started after the delete
    assert [c.body["execution_id"] for c in agent.calls] == [str(live)]
    # and both runs are cancelled with the reason, nothing left running
    for execution_id in (live, orphan):
        row = execution(execution_id)
        assert row.status == "cancelled", (row.status, row.error)
        assert "automation was deleted" in (row.error or "")
        assert all(s.status != StepStatus.RUNNING for s in step_runs(execution_id))


def test_deleting_a_schedule_cancels_its_running_runs(db: None, redis_client: Any) -> None:
    # given a schedule whose first slot's run is at the agent (step 1 started)
    automation_id = make_automation(steps=2)
    schedule_id = make_schedule(automation_id, kind="interval", interval_s=10)
    periodic.dispatch_due(send_run)
    running = executions_of(schedule_id)[0].id
    with session_scope() as session:
        claim = claim_execution(session, running, lease_s=5)
        assert not isinstance(claim, str)
        assert start_step(session, claim, 1, {}, lease_s=5) is not None
    # when the schedule is deleted
    with session_scope() as session:
        cancelled = schedules.delete_schedule(session, schedule_id, actor=ADMIN).cancelled
    # then every run it had is cancelled, the running one too, its step closed
    with session_scope() as session:
        rows = session.scalars(select(Execution).where(Execution.automation_id == automation_id))
        assert {(r.status, r.error) for r in rows} == {
            ("cancelled", "cancelled: the schedule was deleted")
        }
    assert cancelled >= 9
    assert [(s.status, s.error) for s in step_runs(running)] == [
        ("cancelled", CANCELLED_STEP_ERROR)
    ]
    # and a takeover finds nothing to take
    with session_scope() as session:
        assert claim_execution(session, running, lease_s=5) == "nothing"


# --- 3. a late older slot never starts after a newer one ---------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("policy", ["skip", "buffer_one"])
def test_an_older_slot_whose_message_was_lost_does_not_start_after_a_newer_one(
    worker: Any, agent: Any, policy: str
) -> None:
    # given two slots 10 s apart; the first one's message is lost on its way to Redis
    agent.responder = lambda call: Reply(200, {"output": "ok"}, delay_s=4)
    schedule_id = _every_10s(agent, slots=2, lead_s=1, overlap_policy=policy)
    _, newer_slot = _slots(schedule_id)
    sent: list[RunMessage] = []
    assert periodic.dispatch_due(sent.append) == 2
    older, newer = (r.id for r in executions_of(schedule_id))
    for message in sent:
        if message.execution_id != older:
            send_run(message)
    # when the newer slot is running and housekeeping sends the older one again
    wait_for(lambda: execution(newer).status == "running", timeout=20, message="the newer run")
    assert periodic.recover_stranded(send_run) == 1
    wait_for(lambda: _settled(schedule_id), timeout=30, message="both slots to settle")
    # then the older slot did not run after the newer one: it is skipped, with the true reason
    late = execution(older)
    assert (late.status, late.error) == (
        "skipped",
        "skipped: a later slot already started (overlap policy)",
    )
    assert execution(newer).status == "succeeded"
    assert _calls_by_slot(agent) == {newer_slot.isoformat(): 1}
    _assert_counters_match_rows(schedule_id)


# --- 4. run_all replays run one after another ------------------------------------------


@pytest.mark.timeout(120)
def test_run_all_replays_every_missed_slot_one_after_another(worker: Any, agent: Any) -> None:
    # given a schedule (default overlap policy: skip) whose scheduler was down across
    # thirty slots, all older than the misfire grace and inside the catch-up window
    automation_id = make_automation(agent_url=agent.url, steps=1)
    start = now() - timedelta(seconds=400)
    schedule_id = make_schedule(
        automation_id,
        kind="interval",
        interval_s=10,
        start_at=start,
        end_at=start + INTERVAL * 29,
        misfire_policy="run_all",
    )
    with session_scope() as session:  # as the scheduler left it when it went down
        session.execute(
            update(Schedule)
            .where(Schedule.id == schedule_id)
            .values(enabled=True, next_run_at=start, completed_reason=None)
        )
    # when the scheduler comes back
    assert periodic.dispatch_due(send_run) == 30
    wait_for(lambda: _settled(schedule_id), timeout=90, interval=0.5, message="every replay")
    # then every missed slot ran, once, in slot order, none overlapping the previous one
    rows = executions_of(schedule_id)
    assert [r.status for r in rows] == ["succeeded"] * 30
    assert _calls_by_slot(agent) == {r.scheduled_for.isoformat(): 1 for r in rows}
    for previous, current in itertools.pairwise(rows):
        assert previous.finished_at is not None and current.started_at is not None
        assert current.started_at >= previous.finished_at
    _assert_counters_match_rows(schedule_id)
    assert fetch(Schedule, schedule_id).skipped_count == 0


# --- 5. cancel stops a running execution before its next step --------------------------


@pytest.mark.timeout(60)
def test_cancelling_a_running_execution_stops_it_and_drops_the_answer_in_flight(
    worker: Any, agent: Any
) -> None:
    # given a three-step run whose step 2 is at the agent (it answers after 3 s)
    def responder(call: Call) -> Reply:
        step = call.body["step_number"]
        return Reply(200, {"output": f"step {step}"}, delay_s=3 if step == 2 else 0)

    agent.responder = responder
    automation_id = make_automation(agent_url=agent.url, steps=3, step_timeout_s=10)
    execution_id = make_execution(automation_id)
    send_run(RunMessage(execution_id, 3))
    wait_for(lambda: len(agent.calls) == 2, message="step 2 at the agent")
    # when a person cancels it
    cancel(execution_id, actor=ADMIN)
    # then at once nothing of it is running: the step at the agent is closed with the reason
    steps = [(s.step_number, s.status, s.error) for s in step_runs(execution_id)]
    assert steps == [(1, "succeeded", None), (2, "cancelled", CANCELLED_STEP_ERROR)]
    # and once the agent has answered, the answer is dropped and step 3 never starts
    time.sleep(4)
    assert [c.body["step_number"] for c in agent.calls] == [1, 2]
    assert [(s.step_number, s.status, s.response_status) for s in step_runs(execution_id)] == [
        (1, "succeeded", 200),
        (2, "cancelled", None),
    ]
    row = execution(execution_id)
    assert (row.status, row.error) == ("cancelled", "cancelled by test")
    with session_scope() as session:
        running = session.scalars(select(StepRun.id).where(StepRun.status == "running")).all()
    assert running == []


def test_a_cancelled_run_whose_step_then_fails_is_not_a_dead_letter(
    worker: Any, agent: Any, redis_client: Any
) -> None:
    # given a run whose only step is at the agent, which will refuse it (400) after 2 s
    agent.responder = lambda call: Reply(400, "no", delay_s=2)
    automation_id = make_automation(agent_url=agent.url, steps=1, step_timeout_s=10)
    execution_id = make_execution(automation_id)
    send_run(RunMessage(execution_id, 3))
    wait_for(lambda: len(agent.calls) == 1, message="the step at the agent")
    # when a person cancels it before the answer comes
    cancel(execution_id, actor=ADMIN)
    time.sleep(3)
    # then the refusal is not this worker's to report: no dead letter, still cancelled
    assert queues.dead_letters("default") == []
    assert execution(execution_id).status == "cancelled"
