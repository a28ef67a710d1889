"""End to end: the Procfile's scheduler, dispatcher and worker as real processes."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from db.models import Delivery, Heartbeat, Schedule
from db.session import db_now, session_scope
from service import channels
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
    with session_scope() as session:
        assert session.get(Heartbeat, "dispatch") is not None


def test_failure_notifications_through_the_real_processes(procs: Any, agent: Any) -> None:
    from service.executions import run_now
    from stepwise.demo_agent import Reply, default_reply
    from tasks.actors import notify_tick
    from testkit.factories import ADMIN, execution
    from testkit.receivers import http_receiver, smtp_server

    def heartbeat() -> Any:
        with session_scope() as session:
            row = session.get(Heartbeat, "notify")
            return row and row.at

    def tick() -> None:
        """The scheduler's minute tick for notifications, sent now; back once it has run."""
        before = heartbeat()
        notify_tick.send()
        wait_for(lambda: heartbeat() != before, timeout=60, message="the notify tick to run")

    def run(status: str) -> uuid.UUID:
        execution_id = run_now(automation_id, actor=ADMIN)
        wait_for(
            lambda: execution(execution_id).status == status,
            timeout=60,
            message=f"the run to end {status}",
            details=lambda: procs.log("worker")[-3000:],
        )
        return execution_id

    with smtp_server() as mailbox, http_receiver() as receiver:
        # given an automation whose agent fails, retried twice a run, notifying after 2 runs
        agent.responder = lambda call: Reply(503, {"error": "agent down"})
        automation_id = make_automation(name="Sync", agent_url=agent.url, steps=1, max_retries=2)
        mail = channels.add_channel(
            "mail",
            f"mailto://alerts:pw-Rt55e2e@127.0.0.1:{mailbox.port}"
            "?to=ops@example.com&from=stepwise@example.com&mode=insecure",
            actor=ADMIN,
        )
        hook = channels.add_channel(
            "hook", f"json://127.0.0.1:{receiver.port}/hooks/tok-Wq19e2e", actor=ADMIN
        )
        channels.set_notifications(automation_id, [mail.id, hook.id], 2, actor=ADMIN)
        procs.start("worker", STEPWISE_NOTIFY_SETTLE_S="0")
        procs.start("dispatcher", STEPWISE_NOTIFY_SETTLE_S="0")
        procs.wait_ready("worker", READY)
        procs.wait_ready("dispatcher", READY)
        # when one run fails after its retries: one failed run, under the threshold
        first = run("failed")
        assert len(agent.calls_for(str(first))) == 3
        tick()
        assert mailbox.messages == [] and receiver.posts == []
        # when a second run fails, then a third while the incident is open
        run("failed")
        tick()
        run("failed")
        tick()
        # then exactly one failure notice reached each channel
        assert len(mailbox.messages) == 1 and len(receiver.posts) == 1
        assert "Subject: Stepwise: Sync is failing" in mailbox.messages[0]
        assert receiver.posts[0][2]["title"] == "Stepwise: Sync is failing"
        assert "2 consecutive runs failed" in receiver.posts[0][2]["message"]
        assert "HTTP 503" in receiver.posts[0][2]["message"]
        # when the agent answers again and a run succeeds
        agent.responder = default_reply
        run("succeeded")
        tick()
        tick()
        # then exactly one recovery notice follows on each channel
        assert len(mailbox.messages) == 2 and len(receiver.posts) == 2
        assert "Subject: Stepwise: Sync recovered" in mailbox.messages[1]
        assert receiver.posts[1][2]["title"] == "Stepwise: Sync recovered"
    # and every delivery is recorded with its outcome
    with session_scope() as session:
        made = session.execute(select(Delivery.channel_name, Delivery.kind, Delivery.status)).all()
    assert sorted(map(tuple, made)) == [
        ("hook", "failure", "ok"),
        ("hook", "recovery", "ok"),
        ("mail", "failure", "ok"),
        ("mail", "recovery", "ok"),
    ]
