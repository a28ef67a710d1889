"""Waits in tests: a run parked on waiting steps, made as the engine stores one; its wake-ups."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from core.access import Actor
from core.settings import get_settings
from core.vocabulary import ExecutionStatus, StepStatus
from core.waits import callback_url
from db.models import StepRun
from db.session import session_scope
from testkit.factories import ADMIN, add_executions, add_steps, make_graph, now

# An async step, an approval an editor decides (rejection fails), one an admin decides
# (rejection skips), and a step that needs all three: the graph `parked_run` makes.
WAIT_GRAPH: list[dict[str, Any]] = [
    {"key": "fetch", "kind": "async", "message": "Fetch {{ input.topic }}", "timeout_s": 3600},
    {"key": "ok", "kind": "approval", "message": "Send the report?"},
    {
        "key": "boss",
        "kind": "approval",
        "message": "Pay?",
        "approvers": "admin",
        "on_reject": "skip",
    },
    {"key": "use", "needs": ["fetch", "ok", "boss"], "message": "Use {{ steps.fetch.output }}"},
]
WAITS: dict[str, dict[str, Any]] = {
    "fetch": {"kind": "async", "progress": None, "note": None, "progress_at": None},
    "ok": {
        "kind": "approval",
        "role": "editor",
        "on_reject": "fail",
        "on_timeout": "reject",
        "message": "Send the report?",
    },
    "boss": {
        "kind": "approval",
        "role": "admin",
        "on_reject": "skip",
        "on_timeout": "reject",
        "message": "Pay?",
    },
}


def parked_run(
    *,
    actor: Actor = ADMIN,
    status: ExecutionStatus = ExecutionStatus.WAITING,
    until_s: float = 3600,
    agent_url: str = "http://127.0.0.1:9/agent",
) -> tuple[uuid.UUID, dict[str, int]]:
    """A run of a new automation of WAIT_GRAPH (in `actor`'s workspace) with its three
    waiting steps stored as the engine stores them, `until_s` from the database's now,
    itself `status` (parked: no lease, woken at the earliest deadline); its id and the
    step run id of each waiting step by key."""
    automation_id = make_graph(WAIT_GRAPH, actor=actor, agent_url=agent_url)
    at = now()
    until = at + timedelta(seconds=until_s)
    (execution_id,) = add_executions(
        automation_id,
        [
            {
                "status": status,
                "queued_at": at,
                "started_at": at,
                "finished_at": None,
                "attempt": 1,
                "available_at": until,
                "total_steps": len(WAIT_GRAPH),
            }
        ],
    )
    add_steps(
        execution_id,
        [
            {
                "step_number": number,
                "step_key": key,
                "attempt": 1,
                "status": StepStatus.WAITING,
                "request": {},
                "started_at": at,
                "wait_until": until,
                "wait": wait,
                **({"response_status": 202} if wait["kind"] == "async" else {}),
            }
            for number, (key, wait) in enumerate(WAITS.items(), start=1)
        ],
    )
    with session_scope() as session:
        ids = dict(
            session.execute(
                select(StepRun.step_key, StepRun.id).where(StepRun.execution_id == execution_id)
            ).all()
        )
    return execution_id, ids


def callback_of(step_run_id: int, *, valid_s: float = 3600) -> str:
    """The callback URL path (`/v1/callbacks/<token>`) of a step run, its token valid
    `valid_s` from the database's now."""
    url = callback_url(get_settings(), step_run_id, now() + timedelta(seconds=valid_s))
    return url.removeprefix(get_settings().public_base_url())


def wake_ups(redis_client: Any, execution_id: uuid.UUID) -> int:
    """How many run messages for `execution_id` are in Redis, ready or delayed."""
    found = 0
    for queue in ("default", "default.DQ", "urgent", "urgent.DQ"):
        for data in redis_client.hgetall(f"dramatiq:{queue}.msgs").values():
            if json.loads(data)["args"] == [str(execution_id)]:
                found += 1
    return found
