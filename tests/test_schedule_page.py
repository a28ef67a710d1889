"""The schedule page (`/schedule?id=<schedule id>`) through AppTest, on real Postgres and
Redis: what it shows, its actions, backfill, and who sees what. tests/test_browser.py opens
it in a real browser."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine

from core.vocabulary import Role, Trigger
from db import queries
from db.queries import ExecutionFilters
from db.session import session_scope
from service import schedules
from testkit.factories import (
    ADMIN,
    add_executions,
    executions_of,
    make_automation,
    make_schedule,
    make_workspace,
    now,
    person,
    schedule,
)
from testkit.pages import schedule_page, texts

pytestmark = pytest.mark.usefixtures("db", "redis_client")


def test_the_page_shows_timing_next_runs_counters_and_recent_runs() -> None:
    # given a weekday schedule with a succeeded and a failed run
    automation_id = make_automation(name="Morning digest")
    schedule_id = make_schedule(automation_id, cron_expr="0 9 * * 1-5", timezone="Europe/Berlin")
    add_executions(
        automation_id,
        [
            {"schedule_id": schedule_id, "trigger": "schedule", "status": "succeeded"},
            {"schedule_id": schedule_id, "trigger": "schedule", "status": "failed", "error": "503"},
        ],
    )
    # when its page opens on a Wednesday (the backfill form offers yesterday: a weekday)
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    wednesday = today - timedelta(days=(today.weekday() - 2) % 7 or 7)  # a past one
    with time_machine.travel(wednesday, tick=True):
        at = schedule_page(schedule_id)
    text = texts(at, bold=False)
    # then the timing reads in words, with the next 10 runs in its zone and the viewer's
    assert "Morning digest" in text and ":green-badge[active]" in at.markdown[0].value
    assert "At 09:00 AM, Monday through Friday (Europe/Berlin)" in text
    next_runs = at.dataframe[0].value
    assert len(next_runs) == 10 and "CE" in next_runs.iloc[0, 0]
    # and its record, and its recent runs (both listed, newest first)
    assert "**Runs** 0" in at.markdown[1].value and "**Missed** 0" in at.markdown[1].value
    recent = at.dataframe[1].value
    assert list(recent["Error"]) == ["", "503"]
    # and an editor's controls
    labels = [b.label for b in at.button]
    assert labels[:3] == ["Pause", "Run now", "Edit"] and "Backfill 1 run(s)" in labels[-1]


def test_pause_with_a_note_shows_it_then_resume_clears_it() -> None:
    schedule_id = make_schedule(make_automation(), cron_expr="*/5 * * * *")
    at = schedule_page(schedule_id)
    at.text_input(key="sp_note").input("**vendor** down until Monday").run()
    at.button(key="sp_pause").click().run()
    assert not at.exception, at.exception
    stored = schedule(schedule_id)
    assert (stored.enabled, stored.pause_note, stored.paused_by) == (
        False,
        "**vendor** down until Monday",
        "local admin",
    )
    # shown as text, with who paused it; the next runs are those if resumed now
    assert "Paused by local admin" in texts(
        at, bold=False
    ) and "**vendor** down until Monday" in texts(at, bold=False)
    assert "Next 10 runs (if resumed now)" in texts(at, bold=False)
    at.button(key="sp_resume").click().run()
    assert schedule(schedule_id).enabled and schedule(schedule_id).pause_note is None
    assert "Schedule resumed" in texts(at, bold=False)


def test_run_now_starts_a_run_linked_from_the_page() -> None:
    schedule_id = make_schedule(make_automation(), cron_expr="0 0 1 1 *")
    at = schedule_page(schedule_id)
    at.button(key="sp_run").click().run()
    assert not at.exception, at.exception
    automation_id = schedule(schedule_id).automation_id
    with session_scope() as session:
        runs = queries.list_executions(
            session, ExecutionFilters(automation_id=automation_id), actor=ADMIN
        ).rows
    assert [r.trigger for r in runs] == ["manual"]
    assert "Run started: follow it on its page." in texts(at, bold=False)
    # and it is the schedule's run: stored with it, listed under it on its page
    assert [(r.trigger, r.schedule_id) for r in executions_of(schedule_id)] == [
        (Trigger.MANUAL, schedule_id)
    ]
    assert "No run of this schedule yet" not in texts(at, bold=False)


def test_backfill_previews_the_count_then_makes_the_runs_once() -> None:
    # given an hourly schedule, and a range of the last three whole hours in its zone
    schedule_id = make_schedule(make_automation(), cron_expr="0 * * * *", timezone="UTC")
    end = now().replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(hours=3)
    at = schedule_page(schedule_id)
    at.date_input(key="bf_from_date").set_value(start.date())
    at.time_input(key="bf_from_time").set_value(start.time())
    at.date_input(key="bf_to_date").set_value(end.date())
    at.time_input(key="bf_to_time").set_value(end.time()).run()
    # then the preview says how many runs it will make, before anything is written
    assert "This range holds 3 slot(s); 0 already have a run, so 3 run(s)" in texts(at, bold=False)
    assert executions_of(schedule_id) == []
    # when confirmed, then three backfill runs exist and are listed on the page
    at.button(key="bf_confirm").click().run()
    assert not at.exception, at.exception
    made = executions_of(schedule_id)
    assert [r.scheduled_for for r in made] == [start + timedelta(hours=h) for h in range(3)]
    assert {r.trigger for r in made} == {Trigger.BACKFILL}
    assert "Backfill: 3 run(s) queued; 0 slot(s) already had their run." in texts(at, bold=False)
    assert len(at.dataframe[1].value) == 3
    # and the same range again would make nothing: the button says so and is disabled
    assert "3 already have a run, so 0 run(s)" in texts(at, bold=False)
    assert at.button(key="bf_confirm").disabled


def test_a_bad_backfill_range_is_explained_and_writes_nothing() -> None:
    schedule_id = make_schedule(make_automation(), cron_expr="* * * * *")
    at = schedule_page(schedule_id)
    today = now().date()
    at.date_input(key="bf_from_date").set_value(today - timedelta(days=7)).run()
    assert "This range holds" in texts(
        at, bold=False
    ) and "a backfill makes at most 100 runs" in texts(at, bold=False)
    at.date_input(key="bf_to_date").set_value(today + timedelta(days=2)).run()
    assert "To must not be in the future" in texts(at, bold=False)
    assert executions_of(schedule_id) == []


@pytest.mark.parametrize("wanted", ["not-a-uuid", str(uuid.uuid4()), ""])
def test_a_bad_or_unknown_schedule_id_says_not_found(wanted: str) -> None:
    assert "Schedule not found" in texts(schedule_page(wanted), bold=False)


def test_another_workspaces_schedule_is_not_found() -> None:
    theirs = make_workspace("Their team", admin="eve@their.example")
    their_schedule = make_schedule(make_automation(actor=theirs, name="Payroll"), actor=theirs)
    at = schedule_page(their_schedule)
    assert "Schedule not found in this workspace" in texts(at, bold=False)
    assert "Payroll" not in repr(at)


def test_a_viewer_sees_the_schedule_without_any_write_control() -> None:
    schedule_id = make_schedule(make_automation(name="Viewed"))
    schedules.pause(schedule_id, actor=ADMIN, note="on hold")
    viewer = person("vera@example.com", role=Role.VIEWER)
    at = schedule_page(schedule_id, acting=viewer)
    assert "Viewed" in texts(at, bold=False) and "on hold" in texts(at, bold=False)
    assert not at.button and not at.text_input and not at.date_input


def test_forged_writes_of_a_viewer_are_refused() -> None:
    from core.errors import Forbidden

    schedule_id = make_schedule(make_automation())
    viewer: Any = person("vera@example.com", role=Role.VIEWER)
    end = now()
    with pytest.raises(Forbidden):
        schedules.pause(schedule_id, actor=viewer, note="x")
    with pytest.raises(Forbidden):
        schedules.backfill(schedule_id, end - timedelta(hours=1), end, actor=viewer)
    assert schedule(schedule_id).enabled and executions_of(schedule_id) == []


def test_the_page_shows_pause_history_and_runs_started_by_hand() -> None:
    # given a schedule paused with a note, then resumed, and a run of it started by hand
    automation_id = make_automation(name="Paused and poked")
    schedule_id = make_schedule(automation_id, cron_expr="0 3 * * *", timezone="Europe/Berlin")
    schedules.pause(schedule_id, actor=ADMIN, note="Agent maintenance until Monday")
    schedules.resume(schedule_id, actor=ADMIN)
    add_executions(automation_id, [{"schedule_id": schedule_id, "trigger": Trigger.MANUAL}])
    add_executions(automation_id, [{"schedule_id": None, "trigger": Trigger.MANUAL}])
    # when its page opens
    at = schedule_page(schedule_id)
    # then the pause history says who paused and resumed it, when, and the note
    headings = [s.value for s in at.subheader]
    assert "Pause history" in headings and "Runs started by hand" in headings
    history = next(d.value for d in at.dataframe if "Note" in d.value.columns)
    assert list(history["What"]) == ["resumed", "paused"]
    assert set(history["Who"]) == {ADMIN.name}
    assert list(history["Note"]) == ["", "Agent maintenance until Monday"]
    assert all(history["When"])
    # and the runs started by hand are this schedule's only (listed under recent runs too)
    manual = [d.value for d in at.dataframe if "Trigger" in d.value.columns]
    assert [list(m["Trigger"]) for m in manual] == [["manual"], ["manual"]]
