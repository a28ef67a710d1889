"""The dashboard's reads, on a real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from core.vocabulary import OPEN_STATUSES
from db import figures, queries
from db.dispatch import beat
from db.models import StepRun
from db.queries import ExecutionFilters
from db.session import session_scope
from testkit.factories import ADMIN, add_executions, make_automation, make_schedule, now

pytestmark = pytest.mark.usefixtures("db")


def test_kpis_count_active_schedules_runs_and_rates() -> None:
    # given one active and one paused schedule and runs today and last week
    auto = make_automation()
    make_schedule(auto)
    make_schedule(auto, enabled=False)
    t = now()
    add_executions(
        auto,
        [
            {"status": "succeeded", "finished_at": t - timedelta(hours=1)},
            {"status": "succeeded", "finished_at": t - timedelta(hours=2)},
            {"status": "failed", "finished_at": t - timedelta(hours=3)},
            {"status": "skipped", "finished_at": t - timedelta(hours=3)},
            {"status": "failed", "finished_at": t - timedelta(days=3)},
            {"status": "succeeded", "finished_at": t - timedelta(days=9)},
            {"status": "queued", "started_at": None, "finished_at": None},
        ],
    )
    # when
    with session_scope() as session:
        k = figures.kpis(session, actor=ADMIN)
    # then
    assert k.active_schedules == 1
    assert k.runs_24h == 4
    assert k.success_rate_24h == pytest.approx(2 / 3)
    assert k.success_rate_7d == pytest.approx(2 / 4)
    assert k.failures_24h == 1
    assert k.open_runs == 1


def test_kpis_without_history_have_no_rate() -> None:
    with session_scope() as session:
        k = figures.kpis(session, actor=ADMIN)
    assert (k.runs_24h, k.success_rate_24h, k.success_rate_7d) == (0, None, None)


def test_outcome_series_buckets_by_day_and_status_zero_filled() -> None:
    # given runs on two days, nothing on the day between
    auto = make_automation()
    day = datetime(2030, 1, 10, tzinfo=UTC)
    add_executions(
        auto,
        [
            {"status": "succeeded", "finished_at": day + timedelta(hours=1)},
            {"status": "succeeded", "finished_at": day + timedelta(hours=5)},
            {"status": "failed", "finished_at": day + timedelta(hours=23)},
            {"status": "skipped", "finished_at": day + timedelta(days=2, hours=3)},
            {"status": "cancelled", "finished_at": day + timedelta(hours=2)},  # not charted
        ],
    )
    # when
    with session_scope() as session:
        points = figures.outcome_series(
            session, since=day, until=day + timedelta(days=3), bucket="day", actor=ADMIN
        )
    # then
    table = {(p.bucket.date().day, p.status): p.count for p in points}
    assert len(points) == 3 * 3
    assert table[(10, "succeeded")] == 2
    assert table[(10, "failed")] == 1
    assert table[(11, "succeeded")] == table[(11, "failed")] == table[(11, "skipped")] == 0
    assert table[(12, "skipped")] == 1


def test_outcome_series_by_hour() -> None:
    auto = make_automation()
    hour = datetime(2030, 1, 10, 8, tzinfo=UTC)
    add_executions(auto, [{"status": "failed", "finished_at": hour + timedelta(minutes=59)}])
    with session_scope() as session:
        points = figures.outcome_series(
            session, since=hour, until=hour + timedelta(hours=2), bucket="hour", actor=ADMIN
        )
    failed = [(p.bucket, p.count) for p in points if p.status == "failed"]
    assert failed == [(hour, 1), (hour + timedelta(hours=1), 0)]


def test_list_executions_filters_and_pages_newest_first() -> None:
    # given two automations with a mix of runs
    a = make_automation(name="Alpha")
    b = make_automation(name="Beta")
    t = now()
    ids_a = add_executions(
        a,
        [
            {"status": "failed" if n % 2 else "succeeded", "queued_at": t - timedelta(minutes=n)}
            for n in range(7)
        ],
    )
    add_executions(b, [{"status": "failed", "queued_at": t - timedelta(seconds=30)}])
    with session_scope() as session:
        # when: pages of 3 over Alpha
        first = queries.list_executions(
            session, ExecutionFilters(automation_id=a), limit=3, actor=ADMIN
        )
        second = queries.list_executions(
            session, ExecutionFilters(automation_id=a), limit=3, offset=3, actor=ADMIN
        )
        third = queries.list_executions(
            session, ExecutionFilters(automation_id=a), limit=3, offset=6, actor=ADMIN
        )
        failed = queries.list_executions(
            session, ExecutionFilters(statuses=("failed",)), actor=ADMIN
        )
        window = queries.list_executions(
            session,
            ExecutionFilters(since=t - timedelta(minutes=2, seconds=30), until=t),
            actor=ADMIN,
        )
        manual = queries.count_executions(session, ExecutionFilters(trigger="manual"), actor=ADMIN)
        scheduled = queries.count_executions(
            session, ExecutionFilters(trigger="schedule"), actor=ADMIN
        )
    # then
    assert [r.id for r in first.rows + second.rows + third.rows] == ids_a
    assert (first.has_more, second.has_more, third.has_more) == (True, True, False)
    assert {r.automation_name for r in first.rows} == {"Alpha"}
    assert [r.status for r in failed.rows] == ["failed"] * 4
    assert failed.rows[0].automation_name == "Beta"  # queued 30 s ago: the newest failure
    assert len(window.rows) == 2 + 1  # Alpha at minutes 1 and 2 (0 is `until`), Beta
    assert (manual, scheduled) == (8, 0)


def test_execution_detail_has_the_step_timeline() -> None:
    auto = make_automation(steps=2)
    [run] = add_executions(auto, [{"status": "failed", "error": "boom"}])
    with session_scope() as session:
        session.execute(
            insert(StepRun),
            [
                {
                    "execution_id": run,
                    "step_number": 1,
                    "attempt": 1,
                    "status": "succeeded",
                    "request": {"message": "a"},
                    "response_status": 200,
                    "duration_ms": 12,
                },
                {
                    "execution_id": run,
                    "step_number": 2,
                    "attempt": 1,
                    "status": "failed",
                    "request": {"message": "b"},
                    "response_status": 503,
                    "error": "HTTP 503",
                },
                {
                    "execution_id": run,
                    "step_number": 2,
                    "attempt": 2,
                    "status": "failed",
                    "request": {"message": "b"},
                    "response_status": 400,
                    "error": "HTTP 400",
                },
            ],
        )
    with session_scope() as session:
        detail = queries.execution_detail(session, run, actor=ADMIN)
        missing = queries.execution_detail(session, uuid.uuid4(), actor=ADMIN)
    assert missing is None
    assert detail is not None and detail.execution.error == "boom"
    assert [(s.step_number, s.attempt, s.response_status) for s in detail.steps] == [
        (1, 1, 200),
        (2, 1, 503),
        (2, 2, 400),
    ]
    assert [s.step_name for s in detail.steps] == ["step 1", "step 2", "step 2"]


def test_schedule_stats_percentiles_in_sql() -> None:
    # given one schedule with runs of 1..10 seconds, one failure among them
    auto = make_automation()
    sched = make_schedule(auto, enabled=False)
    t = now()
    rows = []
    for n in range(1, 11):
        start = t - timedelta(hours=1, minutes=n)
        rows.append(
            {
                "schedule_id": sched,
                "trigger": "schedule",
                "scheduled_for": start,
                "status": "failed" if n == 10 else "succeeded",
                "started_at": start,
                "finished_at": start + timedelta(seconds=n),
            }
        )
    add_executions(auto, rows)
    # when
    with session_scope() as session:
        [stats] = figures.schedule_stats(session, since=t - timedelta(days=1), actor=ADMIN)
    # then
    assert (stats.runs, stats.succeeded, stats.failed) == (10, 9, 1)
    assert stats.success_rate == pytest.approx(0.9)
    assert stats.p50_s == pytest.approx(5.5)
    assert stats.p95_s == pytest.approx(9.55)


def test_list_schedules_states_and_queued_runs() -> None:
    auto = make_automation(name="Reports")
    active = make_schedule(auto)
    paused = make_schedule(auto, enabled=False)
    add_executions(
        auto,
        [
            {
                "schedule_id": active,
                "trigger": "schedule",
                "status": "queued",
                "started_at": None,
                "finished_at": None,
            }
        ],
    )
    with session_scope() as session:
        rows = queries.list_schedules(session, actor=ADMIN)
        only_paused = queries.list_schedules(session, state="paused", actor=ADMIN)
        waiting = queries.count_executions(
            session,
            queries.ExecutionFilters(statuses=OPEN_STATUSES, schedule_id=active),
            actor=ADMIN,
        )
        upcoming = figures.upcoming_runs(session, actor=ADMIN)
    by_id = {r.id: r for r in rows}
    assert by_id[active].state == "active" and by_id[active].queued_runs == 1
    assert by_id[paused].state == "paused" and by_id[paused].queued_runs == 0
    assert [r.id for r in only_paused] == [paused]
    assert waiting == 1
    assert [u.schedule_id for u in upcoming] == [active]
    assert by_id[active].automation_name == "Reports"


def test_scheduler_liveness_is_stale_without_a_recent_tick() -> None:
    with session_scope() as session:
        assert figures.scheduler_liveness(session).stale()
        beat(session, "dispatch")
    with session_scope() as session:
        live = figures.scheduler_liveness(session)
    assert not live.stale()
    assert live.stale(max_age=timedelta(seconds=-1))


def test_automation_lists_skip_archived() -> None:
    keep = make_automation(name="Keep")
    gone = make_automation(name="Gone")
    make_schedule(keep)
    from db import automations

    with session_scope() as session:
        automations.delete_automation(session, gone, actor=ADMIN)
    with session_scope() as session:
        rows = queries.list_automations(session, actor=ADMIN)
        names = queries.automation_names(session, actor=ADMIN)
        labels = queries.schedule_labels(session, actor=ADMIN)
    assert [(r.name, r.schedules) for r in rows] == [("Keep", 1)]
    assert list(names.values()) == ["Keep"]
    assert all("Keep" in label for label in labels.values())


@pytest.mark.parametrize(
    ("status", "current", "shown"),
    [
        ("queued", 0, "0/3"),
        ("running", 3, "step 3 of 3 running"),
        ("succeeded", 3, "3/3"),
        ("failed", 1, "0/3, failed at step 1"),
        ("failed", 3, "2/3, failed at step 3"),
        ("cancelled", 2, "1/3"),
    ],
)
def test_steps_done_counts_finished_steps_not_the_step_last_started(
    status: str, current: int, shown: str
) -> None:
    row = queries.ExecutionRow(
        id=uuid.uuid4(),
        automation_id=uuid.uuid4(),
        automation_name="a",
        schedule_id=None,
        trigger="manual",
        status=status,
        scheduled_for=datetime.now(UTC),
        queued_at=datetime.now(UTC),
        started_at=None,
        finished_at=None,
        attempt=1,
        current_step=current,
        total_steps=3,
        error=None,
    )
    assert row.steps_done == shown


def test_failure_groups_gather_failures_by_automation_and_error() -> None:
    # given two automations failing: one twice alike (ids differ), once otherwise
    reports, billing = make_automation(name="Reports"), make_automation(name="Billing")
    t = now()
    _, newest, *_ = add_executions(
        reports,
        [
            {
                "status": "failed",
                "finished_at": t - timedelta(hours=2),
                "error": f"step 2: agent answered HTTP 500 (request {uuid.uuid4()})",
            },
            {
                "status": "failed",
                "finished_at": t - timedelta(hours=1),
                "error": f"step 2: agent answered HTTP 500 (request {uuid.uuid4()})",
            },
            {"status": "failed", "finished_at": t - timedelta(hours=1), "error": "step 1: timeout"},
            {"status": "failed", "finished_at": t - timedelta(days=3), "error": "too old"},
            {"status": "succeeded", "finished_at": t - timedelta(hours=1)},
        ],
    )
    add_executions(billing, [{"status": "failed", "finished_at": t, "error": "step 1: HTTP 403"}])
    # when
    with session_scope() as session:
        groups = figures.failure_groups(session, actor=ADMIN, since=t - timedelta(days=1))
    # then the alike failures are one group of 2, largest first, linked to its newest run
    assert [(g.automation_name, g.error, g.count) for g in groups] == [
        ("Reports", "step 2: agent answered HTTP 500 (request …)", 2),
        ("Billing", "step 1: HTTP 403", 1),
        ("Reports", "step 1: timeout", 1),
    ]
    assert groups[0].last_execution_id == newest


def test_the_next_run_is_the_queued_slot_and_a_paused_schedule_has_none() -> None:
    from service import schedules
    from tasks import periodic
    from testkit.factories import schedule

    # given an every-minute schedule whose next slot dispatch has queued 17 s ahead (as at
    # 01:48:43 for 01:49:00), moving next_run_at on past it
    automation_id = make_automation(name="Minutely")
    schedule_id = make_schedule(automation_id, cron_expr="* * * * *", timezone="UTC")
    slot = schedule(schedule_id).next_run_at
    assert slot is not None
    assert periodic.dispatch_due(lambda message: None, now=slot - timedelta(seconds=17)) >= 1
    moved_on = schedule(schedule_id).next_run_at
    assert moved_on is not None and moved_on > slot
    # when the lists read it, then its next run is the queued slot, not the one after
    with session_scope() as session:
        row = queries.get_schedule_row(session, schedule_id, actor=ADMIN)
        upcoming = figures.upcoming_runs(session, actor=ADMIN)
    assert row is not None and row.next_run == slot
    assert [(u.schedule_id, u.next_run_at) for u in upcoming] == [(schedule_id, slot)]
    # when it is paused, then it has no next run and is not coming up
    schedules.pause(schedule_id, actor=ADMIN, note="maintenance")
    with session_scope() as session:
        row = queries.get_schedule_row(session, schedule_id, actor=ADMIN)
        upcoming = figures.upcoming_runs(session, actor=ADMIN)
    assert row is not None and row.state == "paused" and row.next_run is None
    assert upcoming == []
