"""What the dashboard (and scripts) do to runs, through the workers' own paths.

Each action commits its database change first and only then sends a message,
so a worker always finds the row it is told about.
"""

from __future__ import annotations

import uuid

from db import commands
from db.runs import RunMessage
from db.session import session_scope
from tasks.actors import dispatch, send_run


def run_now(automation_id: uuid.UUID, *, actor: str) -> uuid.UUID:
    """Start a manual run of the automation now; returns the execution id."""
    with session_scope() as session:
        execution = commands.create_manual_execution(session, automation_id, actor=actor)
        max_retries = commands.get_automation(session, automation_id).max_retries
    send_run(RunMessage(execution.id, max_retries))
    return execution.id


def retry(execution_id: uuid.UUID, *, actor: str) -> None:
    """Run a failed or cancelled execution again from the step that did not succeed."""
    with session_scope() as session:
        _, max_retries = commands.retry_execution(session, execution_id, actor=actor)
    send_run(RunMessage(execution_id, max_retries))


def cancel(execution_id: uuid.UUID, *, actor: str) -> None:
    """Cancel a queued or running execution (a running one stops before its next step)."""
    with session_scope() as session:
        commands.cancel_execution(session, execution_id, actor=actor)


def schedules_changed() -> None:
    """Dispatch now rather than at the next minute tick, so a slot due soon is not late."""
    dispatch.send()
