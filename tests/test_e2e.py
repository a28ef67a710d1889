"""End to end: the Procfile's scheduler, dispatcher and worker as real processes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from db.models import Schedule
from db.session import db_now, session_scope
from testkit.factories import executions_of, make_automation, make_schedule, step_runs
from testkit.waiting import wait_for

pytestmark = pytest.mark.slow
READY = "Worker process is ready for action"


def test_a_schedule_due_in_seconds_runs_through_the_real_processes(procs: Any, agent: Any) -> None:
    # given a 3-step automation and a one-off schedule due in a few seconds
    automation_id = make_automation(agent_url=agent.url, steps=3)
    with session_scope() as session:
        run_at = db_now(session) + timedelta(seconds=8)
    schedule_id = make_schedule(automation_id, kind="once", run_at=run_at)
    # when the Procfile's worker, dispatcher and scheduler run
    procs.start("worker")
    procs.start("dispatcher")
    procs.wait_ready("worker", READY)
    procs.wait_ready("dispatcher", READY)
    procs.start("scheduler")  # periodiq sends a first tick as it starts
    # then one execution for the slot succeeds, its 3 steps recorded
    done = wait_for(
        lambda: (rows := executions_of(schedule_id)) and rows[0].status == "succeeded" and rows,
        timeout=90,
        message="the scheduled execution to succeed",
    )
    assert len(done) == 1
    execution = done[0]
    assert execution.scheduled_for == run_at
    assert execution.started_at is not None and execution.started_at >= run_at
    runs = step_runs(execution.id)
    assert [(r.step_number, r.status, r.response_status) for r in runs] == [
        (1, "succeeded", 200),
        (2, "succeeded", 200),
        (3, "succeeded", 200),
    ]
    # and the agent received exactly one call per step, no earlier than the slot
    calls = agent.calls_for(str(execution.id))
    assert [c.idempotency_key for c in calls] == [f"{execution.id}:{n}" for n in (1, 2, 3)]
    assert calls[0].at >= run_at.timestamp()
    assert calls[0].body["schedule_id"] == str(schedule_id)
    # and the one-off schedule is complete, its counters moved
    with session_scope() as session:
        schedule = session.get(Schedule, schedule_id)
        assert schedule is not None
        assert not schedule.enabled and schedule.completed_reason == "ran once"
        assert (schedule.run_count, schedule.success_count, schedule.last_status) == (
            1,
            1,
            "succeeded",
        )
    # and the scheduler recorded its tick
    from db.models import Heartbeat

    with session_scope() as session:
        assert session.get(Heartbeat, "dispatch") is not None
