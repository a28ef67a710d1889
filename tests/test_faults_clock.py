"""Fault tests over a faked clock: downtime and misfire (5), DST transition days (7).

The dispatcher is the real `tasks.periodic.dispatch_due` on the real database; only
its clock is injected (`now=`), so hours of downtime and whole days take seconds.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import update

from core.settings import get_settings
from core.timing import ScheduleSpec, first_slot, parse_timing, slots_between
from db.dispatch import MISSED_ERROR
from db.models import Schedule
from db.session import session_scope
from tasks import periodic
from tasks.send import send_run
from testkit.factories import executions_of, fetch, make_automation, make_schedule

pytestmark = pytest.mark.slow
MINUTE = timedelta(minutes=1)


def _point_at(schedule_id: uuid.UUID, next_run_at: datetime) -> None:
    """The state a schedule is in when the scheduler last ran before `next_run_at`."""
    with session_scope() as session:
        session.execute(
            update(Schedule).where(Schedule.id == schedule_id).values(next_run_at=next_run_at)
        )


def _tick_through(start: datetime, end: datetime, step: timedelta = MINUTE) -> int:
    """Run the dispatcher once per `step` from `start` to `end`, as periodiq would."""
    sent, now = 0, start
    while now <= end:
        sent += periodic.dispatch_due(send_run, now=now)
        now += step
    return sent


# --- 5. downtime and misfire ---------------------------------------------------------


SPEC = parse_timing(ScheduleSpec(kind="cron", cron_expr="*/5 * * * *"))
# Last tick before the outage, and the tick when the scheduler comes back.
DOWN_FROM = datetime(2026, 6, 1, 8, 0, 30, tzinfo=UTC)
BACK_AT = datetime(2026, 6, 1, 9, 12, 30, tzinfo=UTC)


def _down_schedule(policy: str, window_s: int) -> uuid.UUID:
    automation_id = make_automation(steps=1)
    schedule_id = make_schedule(
        automation_id,
        kind="cron",
        cron_expr="*/5 * * * *",
        misfire_policy=policy,
        catchup_window_s=window_s,
    )
    _point_at(schedule_id, first_slot(SPEC, DOWN_FROM) or DOWN_FROM)
    return schedule_id


@pytest.mark.parametrize(
    ("policy", "window_s"),
    [
        ("skip", 3600),
        ("run_once", 3600),
        ("run_all", 3600),
        ("run_all", 1800),  # the catch-up window cuts the backlog
        ("run_once", 1800),
    ],
)
def test_downtime_applies_the_misfire_policy_and_records_skipped_slots(
    db: None, redis_client: Any, policy: str, window_s: int
) -> None:
    # given a */5 schedule whose scheduler stopped after 08:00:30 and came back at 09:12:30
    settings = get_settings()
    grace = timedelta(seconds=settings.misfire_grace_s)
    horizon = timedelta(seconds=settings.dispatch_horizon_s)
    schedule_id = _down_schedule(policy, window_s)
    # when the scheduler comes back (a tick at BACK_AT, then the following minutes)
    _tick_through(BACK_AT, BACK_AT + 3 * MINUTE)
    # then: slots older than the catch-up window are only counted,
    window_start = BACK_AT - timedelta(seconds=window_s)
    all_missed = list(slots_between(SPEC, DOWN_FROM, BACK_AT - grace))
    expired = [s for s in all_missed if s < window_start]
    missed = [s for s in all_missed if s >= window_start]
    due = list(slots_between(SPEC, BACK_AT - grace, BACK_AT + 3 * MINUTE + horizon))
    assert len(all_missed) == 14 and due  # 08:05 .. 09:10, then 09:15 ...
    run = {"skip": [], "run_once": missed[-1:], "run_all": missed}[policy]
    skipped = [s for s in missed if s not in run]
    rows = executions_of(schedule_id)
    by_slot = {r.scheduled_for: r for r in rows}
    # exactly one row per slot inside the window and none for the expired ones
    assert len(by_slot) == len(rows)
    assert sorted(by_slot) == sorted(missed + due)
    assert not set(expired) & set(by_slot)
    # the policy's runs are queued now, at once (available at the comeback tick)
    for slot in run:
        assert by_slot[slot].status == "queued"
        assert by_slot[slot].available_at == BACK_AT
    # the skipped ones are visible rows with their reason
    for slot in skipped:
        assert by_slot[slot].status == "skipped"
        assert by_slot[slot].error == MISSED_ERROR.format(policy=policy)
        assert by_slot[slot].finished_at is not None
    # due slots run at their exact time
    for slot in due:
        assert by_slot[slot].status == "queued" and by_slot[slot].available_at == slot
    # and the schedule counts every slot it did not run, expired ones included
    schedule = fetch(Schedule, schedule_id)
    assert schedule.missed_count == len(skipped) + len(expired)
    assert schedule.dispatched_count == len(run) + len(due)
    assert schedule.next_run_at == first_slot(SPEC, due[-1] + MINUTE)


def test_a_scheduler_that_comes_back_twice_adds_nothing(db: None, redis_client: Any) -> None:
    # given a run_all schedule back from downtime, dispatched once
    schedule_id = _down_schedule("run_all", 3600)
    first = periodic.dispatch_due(send_run, now=BACK_AT)
    before = [(r.scheduled_for, r.status) for r in executions_of(schedule_id)]
    # when another scheduler (or a duplicate tick) dispatches the same instant,
    # even after re-planning from the old next_run_at
    assert periodic.dispatch_due(send_run, now=BACK_AT) == 0
    _point_at(schedule_id, first_slot(SPEC, DOWN_FROM) or DOWN_FROM)
    assert periodic.dispatch_due(send_run, now=BACK_AT) == 0
    # then no slot gained a second execution
    assert first == 12  # 08:15 .. 09:10 (08:05, 08:10 fell out of the window)
    assert [(r.scheduled_for, r.status) for r in executions_of(schedule_id)] == before


# --- 7. DST -----------------------------------------------------------------------------


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _brute_force(
    zone: ZoneInfo, start: datetime, end: datetime, minutes: set[int]
) -> list[datetime]:
    """Every real minute whose local wall time has a minute in `minutes` (any hour)."""
    found, t = [], start
    while t < end:
        if t.astimezone(zone).minute in minutes:
            found.append(t)
        t += MINUTE
    return found


# (zone, local transition day, {cron expression: the exact UTC instants that day})
DST_DAYS = [
    (  # spring forward 02:00 EST -> 03:00 EDT: 02:30 does not exist, runs at 03:00 EDT
        "America/New_York",
        (2026, 3, 8),
        {"30 2 * * *": ["2026-03-08 07:00"], "0 9 * * *": ["2026-03-08 13:00"]},
    ),
    (  # fall back 02:00 EDT -> 01:00 EST: 01:30 happens twice, runs at the first
        "America/New_York",
        (2026, 11, 1),
        {"30 1 * * *": ["2026-11-01 05:30"], "0 9 * * *": ["2026-11-01 14:00"]},
    ),
    (  # spring forward 02:00 CET -> 03:00 CEST
        "Europe/Berlin",
        (2026, 3, 29),
        {"30 2 * * *": ["2026-03-29 01:00"], "0 9 * * *": ["2026-03-29 07:00"]},
    ),
    (  # fall back 03:00 CEST -> 02:00 CET: 02:30 happens twice
        "Europe/Berlin",
        (2026, 10, 25),
        {"30 2 * * *": ["2026-10-25 00:30"], "0 9 * * *": ["2026-10-25 08:00"]},
    ),
]
WILDCARDS = {"0 * * * *": {0}, "*/30 * * * *": {0, 30}}


@pytest.mark.parametrize(
    ("zone_name", "day", "fixed"),
    DST_DAYS,
    ids=["new_york-spring", "new_york-fall", "berlin-spring", "berlin-fall"],
)
def test_dispatch_through_a_dst_transition_day_runs_the_exact_instants(
    db: None, redis_client: Any, zone_name: str, day: tuple[int, int, int], fixed: dict[str, Any]
) -> None:
    # given fixed-time and wildcard schedules in the zone, armed at local midnight
    zone = ZoneInfo(zone_name)
    start = datetime(*day, tzinfo=zone).astimezone(UTC)
    end = (datetime(*day, tzinfo=zone) + timedelta(days=1)).astimezone(UTC)  # 23/25 h later
    automation_id = make_automation(steps=1)
    schedules = {}
    for expr in [*fixed, *WILDCARDS]:
        schedule_id = make_schedule(
            automation_id,
            kind="cron",
            cron_expr=expr,
            timezone=zone_name,
            overlap_policy="allow",
        )
        timing = parse_timing(ScheduleSpec(kind="cron", cron_expr=expr, timezone=zone_name))
        _point_at(schedule_id, first_slot(timing, start) or start)
        schedules[expr] = schedule_id
    # when the dispatcher ticks every minute through the whole local day
    _tick_through(start - 2 * MINUTE, end)
    # then each fixed time ran exactly once, at the documented instant
    in_day = {
        expr: [r for r in executions_of(sid) if start <= r.scheduled_for < end]
        for expr, sid in schedules.items()
    }
    for expr, instants in fixed.items():
        assert [r.scheduled_for for r in in_day[expr]] == [_utc(i) for i in instants], expr
    # and wildcard expressions ran at every real instant whose wall time matches
    for expr, minutes in WILDCARDS.items():
        expected = _brute_force(zone, start, end, minutes)
        assert [r.scheduled_for for r in in_day[expr]] == expected, expr
    hours = (end - start) / timedelta(hours=1)
    assert len(in_day["0 * * * *"]) == hours in (23, 25)
    # and every run was dispatched ahead of its slot (never late, never missed)
    for rows in in_day.values():
        for row in rows:
            assert row.status == "queued" and row.available_at == row.scheduled_for
    assert all(fetch(Schedule, s).missed_count == 0 for s in schedules.values())
