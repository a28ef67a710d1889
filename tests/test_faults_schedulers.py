"""Fault test 1: many schedulers at once, against the slot set computed independently.

Three `scheduler` (periodiq) and three `dispatcher` processes from the Procfile run
side by side over 300 schedules firing every 10 s for two minutes; every tick is
sent three times and three dispatchers race for the same due schedules. The
expected slots come from `core.timing.slots_between`, not from the rows.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from core.schedule import ScheduleInput
from core.timing import ScheduleSpec, slots_between
from db import schedules as stored_schedules
from db.models import Execution, Schedule
from db.session import db_now, session_scope
from testkit.factories import ADMIN, make_automation, schedule_definition
from testkit.waiting import wait_for

pytestmark = pytest.mark.slow
READY = "Worker process is ready for action"
SCHEDULES = 300
INTERVAL_S = 10
WINDOW_S = 120


def _create_schedules(automation_id: uuid.UUID, start: datetime, end: datetime) -> list[Any]:
    """300 interval schedules in one transaction; returns (id, spec) pairs."""
    specs = []
    with session_scope() as session:
        for _ in range(SCHEDULES):
            spec = ScheduleSpec(kind="interval", interval_s=INTERVAL_S, start_at=start, end_at=end)
            data = schedule_definition(ScheduleInput(spec=spec))
            schedule = stored_schedules.create_schedule(session, automation_id, data, actor=ADMIN)
            specs.append((schedule.id, data.timing))
    return specs


def _open(schedule_ids: list[uuid.UUID]) -> int:
    with session_scope() as session:
        enabled = session.scalar(
            select(func.count()).where(Schedule.id.in_(schedule_ids), Schedule.enabled)
        )
        unfinished = session.scalar(
            select(func.count()).where(Execution.status.in_(("queued", "running")))
        )
    return int(enabled or 0) + int(unfinished or 0)


@pytest.mark.timeout(600)
def test_three_schedulers_run_every_slot_exactly_once(procs: Any, agent: Any) -> None:
    # given three dispatchers (small batches, so they interleave) and a worker
    for n in (1, 2, 3):
        procs.start("dispatcher", as_name=f"dispatcher{n}", STEPWISE_DISPATCH_BATCH="50")
    procs.start("worker", STEPWISE_WORKER_THREADS="8")
    for key in ("dispatcher1", "dispatcher2", "dispatcher3", "worker"):
        procs.wait_ready(key, READY, timeout=60)
    # and 300 schedules every 10 s, their slots bounded to a two-minute window
    automation_id = make_automation(agent_url=agent.url, steps=1, step_timeout_s=10)
    with session_scope() as session:
        start = db_now(session).replace(microsecond=0) + timedelta(seconds=20)
    end = start + timedelta(seconds=WINDOW_S - 1)
    schedules = _create_schedules(automation_id, start, end)
    expected = {
        (schedule_id, slot)
        for schedule_id, spec in schedules
        for slot in slots_between(spec, start, end + timedelta(seconds=1))
    }
    assert len(expected) == SCHEDULES * WINDOW_S // INTERVAL_S == 3600
    # when three schedulers tick (each sends every minute, and once as it starts)
    for n in (1, 2, 3):
        procs.start("scheduler", as_name=f"scheduler{n}")
    began = time.monotonic()
    ids = [schedule_id for schedule_id, _ in schedules]
    wait_for(
        lambda: _open(ids) == 0,
        timeout=WINDOW_S + 240,
        interval=2,
        message="every schedule to complete and every run to end",
    )
    elapsed = time.monotonic() - began
    # then every expected slot has exactly one execution: none missing, none extra
    with session_scope() as session:
        rows = session.execute(
            select(
                Execution.id,
                Execution.schedule_id,
                Execution.scheduled_for,
                Execution.status,
                Execution.started_at,
            )
        ).all()
        completed = Counter(
            session.scalars(select(Schedule.completed_reason).where(Schedule.id.in_(ids)))
        )
    got = Counter((r.schedule_id, r.scheduled_for) for r in rows)
    duplicates = sum(n - 1 for n in got.values())
    missing = expected - set(got)
    extra = set(got) - expected
    statuses = Counter(r.status for r in rows)
    lags = sorted((r.started_at - r.scheduled_for).total_seconds() for r in rows if r.started_at)
    print(
        f"\nmany schedulers: expected {len(expected)} slots, got {len(got)} "
        f"({duplicates} duplicates, {len(missing)} missing, {len(extra)} extra); "
        f"statuses {dict(statuses)}; start lag median {statistics.median(lags):.2f} s, "
        f"max {lags[-1]:.2f} s; all done {elapsed:.0f} s after the schedulers started"
    )
    assert duplicates == 0 and not missing and not extra
    assert statuses == {"succeeded": len(expected)}
    assert completed == {"reached its end": SCHEDULES}
    # and the agent saw each execution's step once
    keys = Counter(c.idempotency_key for c in agent.calls)
    assert len(keys) == len(expected) and set(keys.values()) == {1}
    assert keys.keys() == {f"{r.id}:1" for r in rows}
    # and no run started before its slot
    assert lags[0] >= 0
    ticks = [procs.log(f"dispatcher{n}").count("dispatch: ") for n in (1, 2, 3)]
    print(f"dispatch ticks handled per dispatcher: {ticks}")
