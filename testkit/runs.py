"""Executions run by the real workers in tests: started, and waited for until they end."""

from __future__ import annotations

import uuid
from typing import Any

from core.vocabulary import FINAL_STATUSES
from db.models import Execution
from db.runs import RunMessage
from tasks.send import send_run
from testkit.factories import execution, make_automation, make_execution, step_runs
from testkit.waiting import wait_for


def start_run(
    agent_url: str, *, steps: int = 1, max_retries: int = 3, timeout_s: int = 5
) -> uuid.UUID:
    """A manual execution of a new automation of `steps` steps calling `agent_url`, sent to
    the workers; its id."""
    automation_id = make_automation(
        agent_url=agent_url, steps=steps, max_retries=max_retries, step_timeout_s=timeout_s
    )
    execution_id = make_execution(automation_id)
    send_run(RunMessage(execution_id, max_retries))
    return execution_id


def ended(execution_id: uuid.UUID, *, timeout: float = 30, agent: Any = None) -> Execution:
    """The execution once its status is final; after `timeout` seconds, a failure that
    shows its error, its steps and (given the test's `agent`) the calls the agent had."""

    def details() -> str:
        runs = [(r.step_number, r.status, r.error) for r in step_runs(execution_id)]
        shown = f"execution: {execution(execution_id).error!r}\nsteps: {runs}"
        if agent is not None:
            calls = [c.body.get("step_number") for c in agent.calls_for(str(execution_id))]
            shown += f"\ncalls: {calls}"
        return shown

    done: Execution = wait_for(
        lambda: (e := execution(execution_id)).status in FINAL_STATUSES and e,
        timeout=timeout,
        message=f"execution {execution_id} to end",
        details=details,
    )
    return done
