"""A pause in the second before a slot, while its run may already be claimed.

A slot's message arrives `START_AHEAD_MS` (1 s) before the slot. A run whose start needs
no overlap decision (`allow`), or whose decision is "run" with nothing of its schedule in
the way (`skip` with no other run running), is claimed at once and counts as started: a
pause then lets it run at its slot, as it lets any started run finish (docs/RELIABILITY.md,
"What a person's actions do to runs"). A run whose schedule has another run still running
is claimed only at the slot: a pause before it withdraws the run, which never starts.
Real database, Redis, agent server and an in-process worker, on the real clock.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from core.vocabulary import ExecutionStatus
from db.models import Execution
from db.session import session_scope
from service import schedules as schedule_service
from tasks import periodic
from tasks.send import send_run
from testkit.factories import (
    ADMIN,
    execution,
    executions_of,
    make_automation,
    make_execution,
    make_schedule,
    now,
)
from testkit.processes import worker_in_process
from testkit.waiting import wait_for


@pytest.mark.parametrize(
    ("overlap", "contested"), [("allow", False), ("skip", False), ("skip", True)]
)
def test_a_pause_in_the_second_before_a_slot(
    db: None, redis_client: Any, agent: Any, overlap: str, contested: bool
) -> None:
    # given an interval-10 s schedule whose first slot is 3 s away, dispatched (and, when
    # contested, an earlier run of the schedule still running)
    start = now().replace(microsecond=0) + timedelta(seconds=4)
    automation_id = make_automation(agent_url=agent.url, steps=1, max_retries=0)
    schedule_id = make_schedule(
        automation_id,
        kind="interval",
        interval_s=10,
        start_at=start,
        end_at=start + timedelta(seconds=50),
        overlap_policy=overlap,
    )
    periodic.dispatch_due(send_run)
    first = executions_of(schedule_id)[0]
    assert first.scheduled_for == start
    earlier = []
    if contested:
        previous = make_execution(automation_id, schedule_id=schedule_id, trigger="schedule")
        with session_scope() as session:
            session.execute(
                update(Execution)
                .where(Execution.id == previous)
                .values(
                    scheduled_for=start - timedelta(seconds=10),
                    status=ExecutionStatus.RUNNING,
                    attempt=1,
                    lease_expires_at=start + timedelta(hours=1),
                )
            )
        earlier = [previous]
    with worker_in_process(threads=4):
        # when its message has arrived (the second before the slot) and it is paused then
        ahead = start.timestamp() - time.time() - 0.9
        time.sleep(max(0.0, ahead))
        if not contested:
            wait_for(
                lambda: execution(first.id).status == ExecutionStatus.RUNNING,
                timeout=max(0.1, start.timestamp() - time.time() - 0.1),
                message="the run claimed ahead of its slot",
            )
        schedule_service.pause(schedule_id, actor=ADMIN)
        assert time.time() < start.timestamp(), "the pause came after the slot"
        if not contested:
            # then the run claimed ahead counts as started: it runs, once, at its slot
            wait_for(
                lambda: execution(first.id).status == ExecutionStatus.SUCCEEDED,
                timeout=30,
                message="the run claimed before the pause to finish",
            )
            calls = agent.calls_for(str(first.id))
            assert len(calls) == 1 and calls[0].at >= start.timestamp()
            assert [r.id for r in executions_of(schedule_id)] == [first.id]
        else:
            # then the run, claimed only at its slot, is withdrawn and never starts
            time.sleep(max(0.0, start.timestamp() - time.time()) + 2)
            assert [r.id for r in executions_of(schedule_id)] == earlier
            assert not agent.calls_for(str(first.id))
