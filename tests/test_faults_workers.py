"""Fault tests on the workers: SIGKILL (2) and SIGTERM (9) mid-step, overlap (6), load (11).

Workers are the Procfile's real `worker` processes (tests/procs.py) except for the
overlap test, which needs a precise thread count and uses an in-process Worker.
Housekeeping is driven by calling `tasks.actors.recover_stranded()` as the
scheduler's minute tick would, so recovery takes seconds instead of a minute.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.models import StepRun
from db.runs import LOST_STEP_ERROR
from db.session import session_scope
from stepwise.demo_agent import Call, Reply
from tasks.actors import recover_stranded, send_run
from tests.conftest import wait_for
from tests.factories import execution, make_automation, make_execution, step_runs

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


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group (shell, dramatiq, its worker children) still runs."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            return True
    return False


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
    send_run(execution_id, max_retries=3)
    wait_for(lambda: len(_keys(agent, execution_id)) == 2, message="step 2 in flight")
    # when the worker is SIGKILLed while step 2 is in flight
    procs.kill("worker")
    killed_at = time.monotonic()
    stuck = execution(execution_id)
    assert (stuck.status, stuck.current_step) == ("running", 2)
    # and a new worker starts while housekeeping runs (every second here)
    procs.start("worker", as_name="worker2")
    procs.wait_ready("worker2", READY)
    wait_for(
        lambda: recover_stranded() >= 0 and execution(execution_id).status == "succeeded",
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
    send_run(execution_id, max_retries=3)
    wait_for(lambda: len(_keys(agent, execution_id)) == 2, message="step 2 in flight")
    # when the process group gets SIGTERM (as honcho and Heroku send it) mid-step
    signalled_at = time.monotonic()
    procs.signal("worker", signal.SIGTERM)
    wait_for(lambda: not _group_alive(worker.pid), timeout=35, message="the worker to exit")
    exit_s = time.monotonic() - signalled_at
    # then every process exited within the 30 s grace time, after the step ended, cleanly
    log = procs.log("worker")
    assert 2.5 <= exit_s < 30, (exit_s, log[-3000:])
    assert "Worker has been shut down" in log and "Killing" not in log, log[-3000:]
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
