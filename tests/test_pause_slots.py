"""Slots due before a pause or an edit that no dispatch reached yet: each goes through
the misfire policy (a run, a recorded skip or a count in `missed_count`), never lost.

The scheduler's outage is made by hand: a schedule whose `next_run_at` is put back to
its first slot, as a scheduler down since then leaves it. Real database and Redis, the
real clock (slots are instants of the database's `now()`).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from core.schedule import ScheduleInput
from core.settings import get_settings
from core.timing import ScheduleSpec, parse_timing, slots_between, spec_of
from core.vocabulary import ExecutionStatus
from db.models import Schedule
from db.session import session_scope
from service import schedules as schedule_service
from tasks import periodic
from tasks.send import send_run
from testkit.factories import (
    ADMIN,
    executions_of,
    fetch,
    make_automation,
    make_schedule,
    now,
    schedule_definition,
)

INTERVAL = timedelta(seconds=10)
DUE_BEFORE = 5  # slots due and never dispatched when the pause (or the edit) comes
POLICIES = ("skip", "run_once", "run_all")
RUN = {"skip": 0, "run_once": 1, "run_all": DUE_BEFORE}


@pytest.fixture
def no_grace(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every slot before now is a missed one, so the misfire policy decides each."""
    monkeypatch.setenv("STEPWISE_MISFIRE_GRACE_S", "0")
    get_settings.cache_clear()
    yield
    monkeypatch.delenv("STEPWISE_MISFIRE_GRACE_S")
    get_settings.cache_clear()


def _undispatched_every_10s(misfire: str) -> uuid.UUID:
    """An interval-10 s schedule with `DUE_BEFORE` slots due (the last one 5 s ago) that
    no dispatch reached: the scheduler was down since its first slot."""
    start = now() - INTERVAL * DUE_BEFORE + timedelta(seconds=5)
    automation_id = make_automation(steps=1)
    schedule_id = make_schedule(
        automation_id,
        kind="interval",
        interval_s=10,
        start_at=start,
        end_at=start + INTERVAL * 30,
        misfire_policy=misfire,
    )
    with session_scope() as session:
        behind = update(Schedule).where(Schedule.id == schedule_id).values(next_run_at=start)
        session.execute(behind)
    return schedule_id


def _due_slots(schedule_id: uuid.UUID, before: datetime) -> list[datetime]:
    row = fetch(Schedule, schedule_id)
    assert row.start_at is not None
    return list(slots_between(parse_timing(spec_of(row)), row.start_at, before))


def _assert_each_slot_accounted(schedule_id: uuid.UUID, before: datetime, misfire: str) -> None:
    """Every slot before `before` has one queued run or is counted missed, as the policy says."""
    slots = _due_slots(schedule_id, before)
    assert len(slots) == DUE_BEFORE
    rows = [r for r in executions_of(schedule_id) if r.scheduled_for < before]
    assert max(Counter(r.scheduled_for for r in rows).values(), default=1) == 1
    ran = [r.scheduled_for for r in rows if r.status == ExecutionStatus.QUEUED]
    skipped = [r.scheduled_for for r in rows if r.status == ExecutionStatus.SKIPPED]
    row = fetch(Schedule, schedule_id)
    assert len(ran) == RUN[misfire]
    assert row.missed_count == DUE_BEFORE - RUN[misfire]
    assert sorted(ran + skipped) == slots  # each slot has its row, run or skipped
    assert ran == slots[DUE_BEFORE - RUN[misfire] :]  # the newest ones run


@pytest.mark.parametrize("misfire", POLICIES)
def test_a_pause_and_resume_settles_the_slots_due_before_the_pause(
    db: None, redis_client: Any, no_grace: None, misfire: str
) -> None:
    # given an interval-10 s schedule with due slots no dispatch reached
    schedule_id = _undispatched_every_10s(misfire)
    # when it is paused, resumed, and the scheduler dispatches
    schedule_service.pause(schedule_id, actor=ADMIN)
    paused_at = fetch(Schedule, schedule_id).paused_at
    assert paused_at is not None
    schedule_service.resume(schedule_id, actor=ADMIN)
    periodic.dispatch_due(send_run)
    # then each slot due before the pause has a run or is counted missed, by the policy
    _assert_each_slot_accounted(schedule_id, paused_at, misfire)
    # and the slots after the resume are dispatched, once each
    later = [r for r in executions_of(schedule_id) if r.scheduled_for >= paused_at]
    assert later and all(r.status == ExecutionStatus.QUEUED for r in later)


@pytest.mark.parametrize("misfire", POLICIES)
def test_an_edit_settles_the_slots_due_before_it_by_the_old_policy(
    db: None, redis_client: Any, no_grace: None, misfire: str
) -> None:
    # given an interval-10 s schedule with due slots no dispatch reached
    schedule_id = _undispatched_every_10s(misfire)
    row = fetch(Schedule, schedule_id)
    # when it is edited (another policy, same timing) and the scheduler dispatches
    edited_at = now()
    spec = ScheduleSpec(kind="interval", interval_s=20, start_at=row.start_at, end_at=row.end_at)
    other = "run_all" if misfire == "skip" else "skip"
    schedule_service.update(
        schedule_id,
        schedule_definition(ScheduleInput(spec=spec, misfire_policy=other)),
        actor=ADMIN,
    )
    periodic.dispatch_due(send_run)
    # then each slot due before the edit went through the policy it had then
    rows = [r for r in executions_of(schedule_id) if r.scheduled_for < edited_at]
    ran = [r for r in rows if r.status == ExecutionStatus.QUEUED]
    assert len(ran) == RUN[misfire]
    assert len(rows) == DUE_BEFORE  # every slot has its row
    assert fetch(Schedule, schedule_id).missed_count == DUE_BEFORE - RUN[misfire]
