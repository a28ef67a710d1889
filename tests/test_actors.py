"""run_execution and dispatch on the real Redis broker, a real dramatiq Worker,
a real PostgreSQL and a real local agent."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from typing import Any

from sqlalchemy import select

from core.limits import MAX_TEXT
from db.models import Execution, Schedule
from db.runs import RunMessage
from db.session import session_scope
from stepwise.demo_agent import Reply
from tasks import periodic
from tasks.send import send_run
from testkit.factories import (
    ADMIN,
    execution,
    make_automation,
    make_execution,
    make_schedule,
    step_runs,
)
from testkit.runs import ended
from testkit.waiting import wait_for


def run(execution_id: uuid.UUID, *, max_retries: int = 3) -> None:
    send_run(RunMessage(execution_id, max_retries))


def test_a_run_calls_the_agent_once_per_step_with_the_contract(worker: Any, agent: Any) -> None:
    # given an automation of 3 steps aimed at the agent
    automation_id = make_automation(agent_url=agent.url, steps=3, project_context="ctx")
    execution_id = make_execution(automation_id)
    # when it runs
    run(execution_id)
    done = ended(execution_id)
    # then each step was one POST with the exact body and Idempotency-Key
    assert done.status == "succeeded", done.error
    calls = agent.calls_for(str(execution_id))
    assert [c.body["step_number"] for c in calls] == [1, 2, 3]
    for number, call in enumerate(calls, start=1):
        assert call.idempotency_key == f"{execution_id}:{number}"
        assert call.headers["content-type"] == "application/json"
        body = call.body
        assert set(body) == {
            "thread_id",
            "automation_id",
            "user_id",
            "message",
            "project_context",
            "step_number",
            "total_steps",
            "timestamp",
            "execution_id",
            "schedule_id",
            "scheduled_for",
            "attempt",
            "previous_output",
            "input",
        }
        assert body["message"] == f"do part {number}"
        assert body["automation_id"] == str(automation_id)
        assert body["execution_id"] == str(execution_id)
        assert body["thread_id"] == str(execution_id)
        assert body["total_steps"] == 3
        assert body["project_context"] == "ctx"
        assert body["schedule_id"] is None
        assert body["attempt"] == 1
        assert body["user_id"] == "local"
        assert body["input"] is None  # a run started without input
    # and each step received the previous step's output
    assert calls[0].body["previous_output"] is None
    assert calls[1].body["previous_output"]["output"] == "done: do part 1"
    assert calls[2].body["previous_output"]["step_number"] == 2
    runs = step_runs(execution_id)
    assert [(r.step_number, r.status, r.response_status) for r in runs] == [
        (1, "succeeded", 200),
        (2, "succeeded", 200),
        (3, "succeeded", 200),
    ]
    assert all(r.duration_ms is not None and r.duration_ms >= 0 for r in runs)
    assert done.result["step_number"] == 3
    assert done.attempt == 1 and done.current_step == 3
    assert done.lease_expires_at is None and done.finished_at is not None


def test_a_step_run_stores_neither_secrets_nor_what_every_step_repeats(
    worker: Any, agent: Any
) -> None:
    # given an automation at the input limits of context, with a key in its URL
    context = "c" * MAX_TEXT
    url = f"{agent.url}?api_key=KEY123&region=eu"
    automation_id = make_automation(agent_url=url, steps=3, project_context=context)
    agent.responder = lambda call: Reply(200, {"output": "o" * 20_000})
    execution_id = make_execution(automation_id)
    # when it runs
    run(execution_id)
    assert ended(execution_id).status == "succeeded"
    # then the agent received everything, every step
    calls = agent.calls_for(str(execution_id))
    assert [c.body["project_context"] for c in calls] == [context] * 3
    assert calls[2].body["previous_output"] == {"output": "o" * 20_000}
    assert all("api_key=KEY123" in c.path for c in calls)
    # and each stored request keeps neither the context, nor the previous output, nor the key
    for stored in (r.request for r in step_runs(execution_id)):
        assert stored["url"] == f"{agent.url}?api_key=REDACTED&region=eu"
        assert not {"project_context", "previous_output", "input"} & set(stored["body"])
        assert stored["not_stored"] == ["project_context", "previous_output", "input"]
        assert len(json.dumps(stored)) < 2_000


def test_two_500s_then_success_resumes_at_the_failed_step(worker: Any, agent: Any) -> None:
    # given an agent that answers step 1, then fails step 2 twice with 500
    automation_id = make_automation(agent_url=agent.url, steps=3, max_retries=3)
    agent.script(Reply(200, {"output": "one"}), Reply(500, "boom"), Reply(500, "boom again"))
    execution_id = make_execution(automation_id)
    # when it runs
    run(execution_id)
    done = ended(execution_id)
    # then it succeeds on attempt 3 and step 1 was never called again
    assert done.status == "succeeded", done.error
    assert done.attempt == 3
    keys = [c.idempotency_key for c in agent.calls_for(str(execution_id))]
    assert keys == [f"{execution_id}:{n}" for n in (1, 2, 2, 2, 3)]
    runs = [
        (r.step_number, r.attempt, r.status, r.response_status) for r in step_runs(execution_id)
    ]
    assert runs == [
        (1, 1, "succeeded", 200),
        (2, 1, "failed", 500),
        (2, 2, "failed", 500),
        (2, 3, "succeeded", 200),
        (3, 3, "succeeded", 200),
    ]
    # and the resumed step got step 1's output
    assert agent.calls_for(str(execution_id))[3].body["previous_output"] == {"output": "one"}


def test_a_400_fails_at_once_without_retries(worker: Any, agent: Any, redis_client: Any) -> None:
    automation_id = make_automation(agent_url=agent.url, steps=2, max_retries=3)
    agent.script(Reply(400, {"error": "bad message"}))
    execution_id = make_execution(automation_id)
    run(execution_id)
    done = ended(execution_id)
    assert done.status == "failed"
    assert done.error == "step 1: agent answered HTTP 400 Bad Request"
    time.sleep(1)  # a retry, if any, would have come by now (backoff 200 ms)
    assert len(agent.calls_for(str(execution_id))) == 1
    assert [r.status for r in step_runs(execution_id)] == ["failed"]
    # and the message is in the dead-letter queue
    assert wait_for(lambda: redis_client.zcard("dramatiq:default.XQ") == 1, timeout=5)


def test_retries_exhausted_fails_and_dead_letters(
    worker: Any, agent: Any, redis_client: Any
) -> None:
    automation_id = make_automation(agent_url=agent.url, steps=1, max_retries=2)
    agent.script(*[Reply(503, "down")] * 5)
    execution_id = make_execution(automation_id)
    run(execution_id, max_retries=2)
    done = ended(execution_id)
    assert done.status == "failed"
    assert done.attempt == 3
    assert "HTTP 503" in (done.error or "")
    assert len(agent.calls_for(str(execution_id))) == 3
    assert wait_for(lambda: redis_client.zcard("dramatiq:default.XQ") == 1, timeout=5)


def test_a_duplicate_message_does_nothing(worker: Any, agent: Any) -> None:
    # given a slow agent and one execution
    automation_id = make_automation(agent_url=agent.url, steps=2)
    agent.script(Reply(200, {"output": "slow"}, delay_s=0.5))
    execution_id = make_execution(automation_id)
    # when the same execution is sent three times
    for _ in range(3):
        run(execution_id)
    done = ended(execution_id)
    time.sleep(1)
    # then the agent saw each step once, and there was one attempt
    assert done.status == "succeeded"
    keys = [c.idempotency_key for c in agent.calls_for(str(execution_id))]
    assert keys == [f"{execution_id}:1", f"{execution_id}:2"]
    assert execution(execution_id).attempt == 1
    # and a message for a finished execution also does nothing
    run(execution_id)
    time.sleep(0.5)
    assert len(agent.calls_for(str(execution_id))) == 2


def test_dispatch_runs_a_due_schedule_at_its_slot(worker: Any, agent: Any) -> None:
    # given an interval schedule whose first slot is a few seconds away
    automation_id = make_automation(agent_url=agent.url, steps=2)
    schedule_id = make_schedule(automation_id, kind="interval", interval_s=3600)
    with session_scope() as session:
        schedule = session.get(Schedule, schedule_id)
        assert schedule is not None
        first = schedule.next_run_at
    # when dispatch runs
    assert periodic.dispatch_due(send_run) == 1
    assert periodic.dispatch_due(send_run) == 0  # a second tick finds nothing new

    # then exactly one execution for that slot ran, not before its time
    def ran() -> Any:
        with session_scope() as session:
            rows = session.scalars(
                select(Execution).where(Execution.schedule_id == schedule_id)
            ).all()
            return len(rows) == 1 and rows[0].status == "succeeded" and rows[0]

    done = wait_for(ran, message="the scheduled run")
    assert done.scheduled_for == first
    assert done.trigger == "schedule"
    calls = agent.calls_for(str(done.id))
    assert calls[0].at >= first.timestamp() - 0.05
    with session_scope() as session:
        schedule = session.get(Schedule, schedule_id)
        assert schedule is not None
        assert (schedule.run_count, schedule.success_count, schedule.failure_count) == (1, 1, 0)
        assert schedule.last_status == "succeeded"
        assert schedule.next_run_at is not None and schedule.next_run_at > first


def test_retrying_a_dead_letter_reopens_the_failed_execution(
    worker: Any, agent: Any, redis_client: Any
) -> None:
    from service import queues as workspace_queues
    from tasks import queues

    # given a run that failed for good and lies in the dead-letter queue
    automation_id = make_automation(agent_url=agent.url, steps=2, max_retries=0)
    agent.script(Reply(200, {"output": "one"}), Reply(400, "bad"))
    execution_id = make_execution(automation_id)
    run(execution_id, max_retries=0)
    assert ended(execution_id).status == "failed"
    letter = wait_for(lambda: queues.dead_letters("default"), timeout=5)[0]
    # when the dead letter is retried from the Queues page
    assert workspace_queues.retry_dead_letter("default", letter.message_id, actor=ADMIN)
    # then the execution resumes at step 2 and succeeds; the dead letter is gone
    done = wait_for(lambda: (e := execution(execution_id)).status == "succeeded" and e)
    assert done.attempt == 2
    keys = [c.idempotency_key for c in agent.calls_for(str(execution_id))]
    assert keys == [f"{execution_id}:1", f"{execution_id}:2", f"{execution_id}:2"]
    assert queues.dead_letters("default") == []


def test_a_run_keeps_one_dead_letter_its_newest_and_loses_it_when_retried(
    worker: Any, agent: Any, redis_client: Any
) -> None:
    from service import executions
    from service import queues as workspace_queues
    from tasks import queues

    # given a run that failed for good, with its dead letter
    automation_id = make_automation(agent_url=agent.url, steps=1, max_retries=0)
    agent.script(Reply(400, "bad"), Reply(400, "still bad"))
    execution_id = make_execution(automation_id)
    run(execution_id, max_retries=0)
    assert ended(execution_id).status == "failed"
    first = wait_for(lambda: queues.dead_letters("default"), timeout=5)[0]
    # when it is retried on the Executions page, then its dead letter goes at once
    executions.retry(execution_id, actor=ADMIN)
    # and when it fails again, then it has one dead letter: the newest, with the run's error
    wait_for(lambda: execution(execution_id).attempt == 2 and ended(execution_id))
    [letter] = wait_for(
        lambda: (found := queues.dead_letters("default")) and found[0] != first and found,
        timeout=5,
    )
    assert letter.message_id != first.message_id
    [shown] = workspace_queues.dead_letters("default", actor=ADMIN)
    assert shown.error == execution(execution_id).error and "400" in (shown.error or "")
    # when it is retried and succeeds, then no dead letter is left
    executions.retry(execution_id, actor=ADMIN)
    assert wait_for(lambda: execution(execution_id).status == "succeeded")
    assert queues.dead_letters("default") == []


def test_a_run_that_fails_for_good_logs_one_line_and_no_traceback(
    worker: Any, agent: Any, redis_client: Any, caplog: Any
) -> None:
    # given an agent that is down, and a run with no retries left
    automation_id = make_automation(agent_url=agent.url, steps=1, max_retries=0)
    agent.script(Reply(503, {"error": "down"}))
    execution_id = make_execution(automation_id)
    # when the run fails for good and its message is dead-lettered
    with caplog.at_level(logging.INFO):
        run(execution_id, max_retries=0)
        assert ended(execution_id).status == "failed"
        assert wait_for(lambda: redis_client.zcard("dramatiq:default.XQ") == 1, timeout=5)
    # then the worker log says so in one line, with no traceback
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    failed = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failed) == 1 and failed[0].startswith(f"run {execution_id} failed: step 1:")
    assert "no retries left" in failed[0]


def test_a_worker_reports_host_pid_queues_and_counts(worker: Any, agent: Any) -> None:
    from tasks import queues
    from tasks.actors import broker
    from tasks.workers import WorkerBeacon

    # given a worker that ran one run to success and one to failure
    automation_id = make_automation(agent_url=agent.url, steps=1, max_retries=0)
    agent.script(Reply(200, {"output": "ok"}), Reply(400, {"error": "no"}))
    ok, bad = make_execution(automation_id), make_execution(automation_id)
    run(ok)
    assert ended(ok).status == "succeeded"
    run(bad)
    assert ended(bad).status == "failed"
    beacon = next(m for m in broker.middleware if isinstance(m, WorkerBeacon))
    # when its beacon is read (it is written every few seconds; here at once)
    wait_for(lambda: beacon.failed == 1, timeout=5)
    beacon.publish()
    [me] = queues.worker_processes()
    # then it is named by host and pid, with its queues and what it handled
    assert me.name == f"{socket.gethostname()}:{os.getpid()}" and me.pid == os.getpid()
    assert me.queues == ("default", "urgent")
    assert (me.processed, me.failed) == (3, 1)  # two runs, and the failed one's report
    assert me.running == 0
