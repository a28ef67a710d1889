"""Every dashboard page through Streamlit's AppTest, on real Postgres and Redis.

AppTest cannot fill `st.data_editor` or fire `run_every`, and sees charts only as
unknown elements: chart data is tested in test_queries.py, steps go through the
text path here, and the real browser test covers the rest.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from typing import Any

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import forms
from db import queries
from db.audit import AuditFilters, list_audit
from db.queries import ExecutionFilters
from db.session import session_scope
from service import automations
from service import executions as executions_service
from service.exports import audit_csv
from testkit.factories import (
    ADMIN,
    add_executions,
    automation_input,
    execution,
    make_automation,
    make_execution,
    make_schedule,
    make_workspace,
    now,
    person,
    row_counts,
    schedule,
    table_snapshot,
)
from testkit.pages import execution_page, load_view, open_new_schedule, open_view, texts
from testkit.waiting import wait_for

pytestmark = pytest.mark.usefixtures("db", "redis_client")


def schedules() -> list[queries.ScheduleRow]:
    with session_scope() as session:
        return queries.list_schedules(session, actor=ADMIN)


@pytest.mark.parametrize(
    "name", ["overview", "schedules", "automations", "executions", "export", "queues", "audit"]
)
def test_every_page_renders_its_empty_state(name: str) -> None:
    at = open_view(name)
    assert at.info, f"{name} shows no empty state"


def test_overview_shows_kpis_and_the_stale_scheduler(db: None) -> None:
    auto = make_automation(name="Reports")
    make_schedule(auto)
    add_executions(auto, [{"status": "succeeded"}, {"status": "failed", "error": "agent said no"}])
    at = open_view("overview")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Active schedules"] == "1"
    assert metrics["Runs, last 24 h"] == "2"
    assert metrics["Success rate, 24 h"] == "50%"
    assert "scheduler has never ticked" in texts(at)
    assert "agent said no" in at.dataframe[0].value.to_string()  # Needs attention, first


def test_needs_attention_groups_failures_by_automation_and_error() -> None:
    # given three alike failures of one automation and one other failure
    auto = make_automation(name="Reports")
    add_executions(
        auto,
        [{"status": "failed", "error": f"step 1: HTTP 500 (trace {uuid.uuid4()})"}] * 3
        + [{"status": "failed", "error": "step 2: timed out"}, {"status": "succeeded"}],
    )
    # when the overview opens
    at = open_view("overview")
    # then one row per automation and error, counted, largest first, with a link to the list
    table = at.dataframe[-1].value
    assert list(table["Runs"]) == [3, 1]
    assert list(table["Error"]) == ["step 1: HTTP 500 (trace …)", "step 2: timed out"]
    assert table["All failed"][0] == f"executions?status=failed&automation={auto}"


@pytest.mark.parametrize("bucket", ["hour", "day"])
def test_the_outcome_chart_has_a_band_per_bucket_and_whole_run_ticks(bucket: str) -> None:
    from dashboard import outcomes
    from db.figures import OutcomePoint

    # given one run in one bucket (a lone bar was cut at the edge, its axis ticked 0.5)
    points = [OutcomePoint(now().replace(minute=0, second=0, microsecond=0), "succeeded", 1)]
    # when the chart is built
    spec = outcomes.chart(outcomes.frame(points), bucket).to_dict()
    # then the x axis is a band per bucket and the y axis counts whole runs
    x, y = spec["encoding"]["x"], spec["encoding"]["y"]
    assert x["type"] == "ordinal" and x["timeUnit"]
    assert y["axis"]["tickMinStep"] == 1 and y["axis"]["format"] == "d"


# --- schedule dialog ----------------------------------------------------------------------


def test_create_a_schedule_from_a_preset() -> None:
    # given
    make_automation(name="Reports")
    at = open_new_schedule()
    # when
    at.selectbox(key="sd_timing").set_value("weekdays_9am").run()
    at.selectbox(key="sd_tz").set_value("Europe/Berlin").run()
    assert "Monday through Friday" in texts(at)
    preview = at.dataframe[-1].value
    assert len(preview) == 10 and "CE" in preview.iloc[0, 0]
    at.button(key="sd_save").click().run()
    # then
    assert not at.exception, at.exception
    [row] = schedules()
    assert (row.cron_expr, row.timezone, row.enabled) == ("0 9 * * 1-5", "Europe/Berlin", True)
    assert row.next_run_at is not None
    assert "Schedule created." in texts(at)
    assert "Reports" in at.dataframe[0].value.to_string()


def test_create_a_schedule_from_custom_cron_with_limits() -> None:
    make_automation()
    at = open_new_schedule()
    at.selectbox(key="sd_timing").set_value(forms.CUSTOM_CRON).run()
    at.text_input(key="sd_cron").input("*/10 9-17 * * 1-5").run()
    assert "Every 10 minutes" in texts(at)
    at.number_input(key="sd_max_runs").set_value(5).run()
    at.selectbox(key="sd_overlap").set_value("allow").run()
    at.button(key="sd_save").click().run()
    assert not at.exception, at.exception
    [row] = schedules()
    assert (row.cron_expr, row.max_runs, row.overlap_policy) == ("*/10 9-17 * * 1-5", 5, "allow")


def test_an_invalid_cron_shows_the_error_and_writes_nothing() -> None:
    make_automation()
    at = open_new_schedule()
    before = table_snapshot()
    at.selectbox(key="sd_timing").set_value(forms.CUSTOM_CRON).run()
    at.text_input(key="sd_cron").input("61 * * * *").run()
    assert "minute 61 is out of range 0-59" in texts(at)
    at.button(key="sd_save").click().run()
    assert not at.exception
    assert "Nothing was saved" in texts(at)
    assert table_snapshot() == before


def test_an_unknown_timezone_shows_the_error_and_writes_nothing() -> None:
    make_automation()
    at = open_new_schedule()
    before = table_snapshot()
    at.selectbox(key="sd_tz").set_value(forms.OTHER_ZONE).run()
    at.text_input(key="sd_tz_other").input("Mars/Olympus_Mons").run()
    assert "unknown timezone 'Mars/Olympus_Mons'" in texts(at)
    at.button(key="sd_save").click().run()
    assert "Nothing was saved" in texts(at)
    assert table_snapshot() == before


def test_end_before_start_is_shown_next_to_the_field() -> None:
    make_automation()
    at = open_new_schedule()
    at.checkbox(key="sd_has_start").check().run()
    at.checkbox(key="sd_has_end").check().run()
    start = at.date_input(key="sd_start_date").value
    at.date_input(key="sd_end_date").set_value(start - timedelta(days=1)).run()
    assert "must be after the start" in texts(at)
    assert "start_at" not in texts(at)  # fields named as the form names them
    before = row_counts()
    at.button(key="sd_save").click().run()
    assert row_counts() == before


def test_limits_stay_open_once_their_error_is_fixed_and_say_what_is_set() -> None:
    # given a new schedule whose end is before its start (an error inside the limits)
    make_automation()
    at = open_new_schedule()
    at.checkbox(key="sd_has_start").check().run()
    at.checkbox(key="sd_has_end").check().run()
    at.number_input(key="sd_max_runs").set_value(5).run()
    start = at.date_input(key="sd_start_date").value
    at.date_input(key="sd_end_date").set_value(start - timedelta(days=1)).run()
    [limits] = at.expander
    assert limits.proto.expanded
    # when the error is fixed
    at.date_input(key="sd_end_date").set_value(start + timedelta(days=3)).run()
    # then the section stays open, and its caption names what is set, in words
    assert not at.exception, at.exception
    [limits] = at.expander
    assert limits.proto.expanded
    assert "must be after" not in texts(at)
    end = start + timedelta(days=3)
    assert f"ends {end:%Y-%m-%d} 00:00" in texts(at)
    assert "at most 5 runs" in texts(at)


def test_the_edit_dialog_names_its_automation() -> None:
    # given a one-off schedule of "Reports"
    auto = make_automation(name="Reports")
    sched = make_schedule(auto, kind="once", run_at=now() + timedelta(days=2), cron_expr=None)
    # when it is opened for editing from its page
    at = load_view("schedule", query={"id": str(sched)})
    at.run()
    at.button(key="sp_edit").click().run()
    assert not at.exception, at.exception
    # then the dialog says which automation it edits (the preview's height: test_browser)
    assert "Editing a schedule of **Reports**" in texts(at)
    assert len(at.dataframe[-1].value) == 1


def test_edit_a_schedule_keeps_its_values_and_saves_changes() -> None:
    auto = make_automation()
    sched = make_schedule(auto, cron_expr="0 9 * * *", timezone="Asia/Tokyo")
    at = load_view("schedule", query={"id": str(sched)})
    at.run()
    at.button(key="sp_edit").click().run()
    assert at.selectbox(key="sd_timing").value == "daily_9am"
    assert at.selectbox(key="sd_tz").value == "Asia/Tokyo"
    at.selectbox(key="sd_timing").set_value("hourly").run()
    at.button(key="sd_save").click().run()
    [row] = schedules()
    assert (row.cron_expr, row.timezone) == ("0 * * * *", "Asia/Tokyo")


def select_rows(at: AppTest, *rows: int) -> AppTest:
    """Tick rows of the schedules table (as a click on their boxes does in a browser)."""
    at.session_state["sch_table"] = {"selection": {"rows": list(rows), "columns": [], "cells": []}}
    at.run()
    assert not at.exception, at.exception
    return at


# --- schedule actions ---------------------------------------------------------------------


def test_pause_resume_run_now_and_delete(agent: Any, worker: Any) -> None:
    # given a schedule of an automation pointing at the real agent
    auto = make_automation(agent_url=agent.url, steps=2)
    sched = make_schedule(auto, cron_expr="0 0 1 1 *")
    at = open_view("schedules")
    # no row ticked, no action shown
    assert [b.label for b in at.button] == ["New schedule"]
    select_rows(at, 0)
    # when paused with a note, then resumed
    at.text_input(key="sch_note").input("vendor down").run()
    at.button(key="sch_pause").click().run()
    assert [(r.state, r.pause_note) for r in schedules()] == [("paused", "vendor down")]
    assert list(at.dataframe[0].value["State"]) == ["paused"]
    assert "paused: vendor down" in texts(at)
    select_rows(at, 0)
    at.button(key="sch_resume").click().run()
    assert [(r.state, r.pause_note) for r in schedules()] == [("active", None)]
    # when run now: the worker runs it for real
    select_rows(at, 0)
    at.button(key="sch_run").click().run()
    assert not at.exception, at.exception
    assert "Run started: follow it on its page." in texts(at)

    def finished() -> list[queries.ExecutionRow]:
        with session_scope() as session:
            rows = queries.list_executions(session, ExecutionFilters(), actor=ADMIN).rows
        return [r for r in rows if r.status == "succeeded"]

    [run] = wait_for(finished, timeout=30, message="the manual run to succeed")
    assert run.trigger == "manual" and len(agent.calls) == 2
    # and it is the schedule's run: under its filter and in its counters
    assert run.schedule_id == sched
    counted = wait_for(
        lambda: (s := schedule(sched)).run_count == 1 and s, timeout=30, message="its count"
    )
    assert (counted.success_count, counted.last_status) == (1, "succeeded")
    # when deleted, after confirming
    add_executions(
        auto,
        [
            {
                "schedule_id": sched,
                "trigger": "schedule",
                "status": "queued",
                "started_at": None,
                "finished_at": None,
                "scheduled_for": now() + timedelta(days=1),
            }
        ],
    )
    select_rows(at, 0)
    at.button(key="sch_delete").click().run()
    assert "Their 1 open run(s), queued, running or waiting, will be cancelled" in texts(at)
    assert len(schedules()) == 1
    at.button(key="sch_delete_yes").click().run()
    assert schedules() == []
    assert "1 open run(s) cancelled" in texts(at)


def test_several_schedules_are_paused_at_once_and_a_viewer_gets_no_actions() -> None:
    # given three schedules, two of them ticked
    a, b = make_automation(name="Alpha"), make_automation(name="Beta")
    for automation in (a, b, b):
        make_schedule(automation)
    at = select_rows(open_view("schedules"), 0, 2)
    # when paused, then those two are paused with the note and the third runs on
    at.text_input(key="sch_note").input("quarter close").run()
    at.button(key="sch_pause").click().run()
    assert not at.exception, at.exception
    states = [(r.automation_name, r.state, r.pause_note) for r in schedules()]
    assert states == [
        ("Alpha", "paused", "quarter close"),
        ("Beta", "active", None),
        ("Beta", "paused", "quarter close"),
    ]
    assert "2 schedule(s) paused" in texts(at)
    # and a viewer ticking rows sees no write control
    viewer = load_view("schedules", acting=person("vera@example.com", "viewer"))
    viewer.run()
    select_rows(viewer, 0)
    assert [b.label for b in viewer.button] == [] and not viewer.text_input


def test_schedule_filters_narrow_the_list() -> None:
    a = make_automation(name="Alpha")
    b = make_automation(name="Beta")
    make_schedule(a)
    make_schedule(b, enabled=False)
    at = open_view("schedules")
    assert len(at.dataframe[0].value) == 2
    at.selectbox(key="sch_state").set_value("paused").run()
    assert list(at.dataframe[0].value["Automation"]) == ["Beta"]
    at.selectbox(key="sch_state").set_value("").run()
    at.selectbox(key="sch_automation").set_value(str(a)).run()
    assert list(at.dataframe[0].value["Automation"]) == ["Alpha"]


# --- automations --------------------------------------------------------------------------


def test_create_an_automation_through_the_text_steps_path() -> None:
    at = open_view("automations")
    at.text_input(key="auto_new_name").input("Weekly digest").run()
    at.text_input(key="auto_new_agent_url").input("http://127.0.0.1:9/agent").run()
    at.toggle(key="auto_new_steps_as_text").set_value(True).run()
    at.text_area(key="auto_new_steps_text").input("Collect | get numbers\nWrite | write it").run()
    at.checkbox(key="auto_new_urgent").check().run()
    at.button(key="auto_new_save").click().run()
    assert not at.exception, at.exception
    with session_scope() as session:
        [row] = queries.list_automations(session, actor=ADMIN)
    assert row.name == "Weekly digest" and row.urgent
    assert row.steps == [
        {"name": "Collect", "message": "get numbers"},
        {"name": "Write", "message": "write it"},
    ]
    assert at.selectbox(key="auto_selected").value == str(row.id)


def test_a_new_signing_secret_is_made_only_once_confirmed_and_says_where_it_goes() -> None:
    # given an automation and its signing secret
    auto = make_automation(name="Signed")
    before = automations.signing_secret(auto, actor=ADMIN)
    at = open_view("automations")
    at.selectbox(key="auto_selected").set_value(str(auto)).run()
    # when "New signing secret" is clicked, then nothing changes until it is confirmed
    at.button(key=f"auto_{auto}_rotate").click().run()
    assert not at.exception, at.exception
    assert "Make a new signing secret for “Signed”?" in texts(at)
    assert automations.signing_secret(auto, actor=ADMIN) == before
    at.button(key=f"auto_{auto}_rotate_no").click().run()
    assert "Make a new signing secret" not in texts(at)
    assert automations.signing_secret(auto, actor=ADMIN) == before
    # when confirmed, then the new secret is shown once, with how an agent gets it
    at.button(key=f"auto_{auto}_rotate").click().run()
    at.button(key=f"auto_{auto}_rotate_yes").click().run()
    after = automations.signing_secret(auto, actor=ADMIN)
    assert after != before and after in [c.value for c in at.code]
    shown = texts(at)
    assert "Store it where your agent reads its settings" in shown
    assert "The bundled demo agent needs nothing" in shown


def test_an_invalid_automation_shows_errors_and_writes_nothing() -> None:
    at = open_view("automations")
    before = table_snapshot()
    at.text_input(key="auto_new_agent_url").input("ftp://example.com").run()
    at.button(key="auto_new_save").click().run()
    shown = texts(at)
    assert "is required" in shown  # the name
    assert "must start with http:// or https://" in shown
    assert "step 1 has no message" in shown
    assert table_snapshot() == before


def test_an_automation_error_goes_as_soon_as_its_field_is_filled() -> None:
    # given a Save that failed on an empty name and a bad URL
    at = open_view("automations")
    at.text_input(key="auto_new_agent_url").input("ftp://example.com").run()
    at.button(key="auto_new_save").click().run()
    assert "is required" in texts(at)
    # when the name is filled in (no Save yet)
    at.text_input(key="auto_new_name").input("Weekly digest").run()
    # then its message is gone while the URL's stays, as in the schedule dialog
    assert not at.exception, at.exception
    assert "is required" not in texts(at)
    assert "must start with http:// or https://" in texts(at)
    # and once the URL is fixed, so is its message
    at.text_input(key="auto_new_agent_url").input("http://127.0.0.1:9/agent").run()
    assert "must start with" not in texts(at)


def test_the_step_grid_starts_new_rows_blank() -> None:
    at = open_view("automations")
    [editor] = [d for d in at.dataframe if d.editing_mode != "read_only"]
    columns = json.loads(editor.proto.columns)
    assert columns["name"]["default"] == "" and columns["message"]["default"] == ""
    # and on a phone (~350 px of grid) the message column starts on screen
    assert columns["order"]["width"] + columns["name"]["width"] <= 220


def test_test_run_shows_the_step_results(agent: Any, worker: Any) -> None:
    auto = make_automation(agent_url=agent.url, steps=2, name="Tested")
    at = open_view("automations")
    at.selectbox(key="auto_selected").set_value(str(auto)).run()
    at.button(key=f"auto_{auto}_test").click().run()
    assert not at.exception, at.exception
    assert ":green-badge[succeeded]" in texts(at)
    steps = at.dataframe[-1].value
    assert list(steps["HTTP"]) == [200, 200]


def test_delete_an_automation_after_confirming() -> None:
    auto = make_automation(name="Doomed")
    make_schedule(auto)
    at = open_view("automations")
    at.selectbox(key="auto_selected").set_value(str(auto)).run()
    at.button(key=f"auto_{auto}_delete").click().run()
    assert "Its 1 schedule(s) stop" in texts(at)
    at.button(key=f"auto_{auto}_delete_yes").click().run()
    with session_scope() as session:
        assert queries.list_automations(session, actor=ADMIN) == []


# --- executions and export ------------------------------------------------------------


@pytest.fixture
def history() -> dict[str, uuid.UUID]:
    a = make_automation(name="Alpha")
    b = make_automation(name="Beta")
    ids = add_executions(
        a,
        [
            {"status": "succeeded" if n % 2 else "failed", "error": None if n % 2 else "HTTP 500"}
            for n in range(30)
        ],
    )
    add_executions(b, [{"status": "cancelled"}])
    return {"alpha": a, "beta": b, "failed": ids[0]}


def test_executions_filters_change_the_rows(history: dict[str, uuid.UUID]) -> None:
    at = open_view("executions")
    assert len(at.dataframe[0].value) == 25  # first page
    at.multiselect(key="ex_status").select("failed").run()
    assert {tuple(v) for v in at.dataframe[0].value["Status"]} == {("failed",)}
    assert len(at.dataframe[0].value) == 15
    at.multiselect(key="ex_status").unselect("failed").run()
    at.selectbox(key="ex_automation").set_value(str(history["beta"])).run()
    assert list(at.dataframe[0].value["Automation"]) == ["Beta"]


def test_executions_page_through_history(history: dict[str, uuid.UUID]) -> None:
    at = open_view("executions")
    first = list(at.dataframe[0].value["Id"])
    at.button(key="ex_next").click().run()
    assert not at.exception, at.exception
    second = list(at.dataframe[0].value["Id"])
    assert len(second) == 31 - 25 and not set(first) & set(second)


def test_a_built_export_is_not_offered_once_the_filters_or_format_change(
    history: dict[str, uuid.UUID],
) -> None:
    # given a CSV built for the failed runs
    at = open_view("export")
    at.multiselect(key="exp_status").select("failed").run()
    at.button(key="exp_build").click().run()
    assert "exp_file" in at.session_state
    # when the format changes, then the old file is no longer offered
    at.radio(key="exp_format").set_value("parquet").run()
    assert "exp_file" not in at.session_state
    # and when a filter changes after a new build, neither
    at.button(key="exp_build").click().run()
    assert at.session_state["exp_file"]["format"] == "parquet"
    at.multiselect(key="exp_status").unselect("failed").run()
    assert not at.exception, at.exception
    assert "exp_file" not in at.session_state


def test_a_built_export_of_a_relative_range_stays_offered_on_the_next_rerun(
    history: dict[str, uuid.UUID],
) -> None:
    # given a file built for "last 24 hours" (an instant that moves with the clock)
    at = open_view("export")
    at.selectbox(key="exp_range").set_value("24h").run()
    at.button(key="exp_build").click().run()
    assert "exp_file" in at.session_state
    # when the page reruns a moment later with the same choices
    time.sleep(0.01)
    at.run()
    # then the file is still offered for download
    assert not at.exception, at.exception
    assert "exp_file" in at.session_state
    assert at.get("download_button")


HOSTILE_NAME = (
    "![x](http://127.0.0.1:9/pixel.png) [Re-authenticate here](http://evil.example/) :red[!]"
)


def test_names_and_agent_text_are_markdown_escaped_where_markdown_renders() -> None:
    # given an automation with a hostile name whose run failed with a hostile error
    automation_id = make_automation(name=HOSTILE_NAME)
    (failed,) = add_executions(automation_id, [{"status": "failed", "error": HOSTILE_NAME}])
    # when its run is opened
    at = execution_page(failed)
    # then every Markdown source that carries it escapes each mark (no link, image, colour)
    sources = [str(e.value) for e in (*at.markdown, *at.error) if "authenticate" in str(e.value)]
    assert len(sources) >= 2
    for source in sources:
        assert "](" not in source and "![" not in source and ":red[" not in source
    # and a reader sees the characters as typed
    assert HOSTILE_NAME in texts(at)


def test_export_builds_the_same_rows_as_the_query(history: dict[str, uuid.UUID]) -> None:
    at = open_view("export")
    at.multiselect(key="exp_status").select("failed").run()
    at.radio(key="exp_format").set_value("parquet").run()
    at.button(key="exp_build").click().run()
    assert not at.exception, at.exception
    built = at.session_state["exp_file"]
    frame = pd.read_parquet(built["path"])
    with session_scope() as session:
        expected = queries.list_executions(
            session, ExecutionFilters(statuses=("failed",)), limit=1000, actor=ADMIN
        ).rows
    assert list(frame["execution_id"]) == [str(r.id) for r in expected]
    assert built["rows"] == 15


# --- queues -----------------------------------------------------------------------------


def test_queues_list_retry_and_purge_dead_letters(redis_client: Any) -> None:
    import dramatiq

    from tasks.actors import run_execution

    automation_id = make_automation()

    def bury(n: int) -> str:
        # A dead run of this workspace (another workspace's would not be listed here).
        message = run_execution.message(str(make_execution(automation_id)))
        message_id = f"dead-{n}"
        redis_client.zadd("dramatiq:default.XQ", {message_id: time.time() * 1000})
        redis_client.hset("dramatiq:default.XQ.msgs", message_id, message.encode())
        return message_id

    first, _ = bury(1), bury(2)
    at = open_view("queues")
    depths = at.dataframe[0].value.set_index("Queue")
    assert list(depths.loc["default"]) == [0, 0, 0, 2]
    assert len(at.dataframe[-1].value) == 2
    at.selectbox(key="q_message").set_value(first).run()
    at.button(key="q_retry").click().run()
    assert redis_client.zcard("dramatiq:default.XQ") == 1
    assert redis_client.llen("dramatiq:default") == 1
    sent = dramatiq.Message.decode(next(iter(redis_client.hvals("dramatiq:default.msgs"))))
    assert sent.actor_name == "run_execution"
    at.button(key="q_purge").click().run()
    at.button(key="q_purge_yes").click().run()
    assert redis_client.zcard("dramatiq:default.XQ") == 0
    assert "Purged 1 dead letter(s)." in texts(at)
    with session_scope() as session:
        audited = list_audit(session, AuditFilters(), actor=ADMIN)
    queue_actions = {r.action: r.actor for r in audited if "dead_letter" in r.action}
    assert queue_actions == {
        "retry_dead_letter": "local admin",
        "purge_dead_letters": "local admin",
    }


def test_dead_letters_are_cleaned_in_bulk_by_their_runs_status(redis_client: Any) -> None:
    from tasks.actors import run_execution

    # given the dead letters of a run that still failed and of one that succeeded since
    automation_id = make_automation()
    failed, succeeded = add_executions(
        automation_id, [{"status": "failed"}, {"status": "succeeded"}]
    )
    for message_id, run in (("dead-failed", failed), ("dead-succeeded", succeeded)):
        redis_client.zadd("dramatiq:default.XQ", {message_id: time.time() * 1000})
        redis_client.hset(
            "dramatiq:default.XQ.msgs", message_id, run_execution.message(str(run)).encode()
        )
    # when those whose run succeeded are cleaned, after confirming
    at = open_view("queues")
    at.multiselect(key="q_clean_status").select("succeeded").run()
    at.button(key="q_purge").click().run()
    assert "Delete the 1 dead letter(s) whose run is now succeeded" in texts(at)
    at.button(key="q_purge_yes").click().run()
    # then only that one went
    assert not at.exception, at.exception
    assert redis_client.zrange("dramatiq:default.XQ", 0, -1) == [b"dead-failed"]
    assert "Purged 1 dead letter(s)." in texts(at)


def test_a_dead_letter_shows_its_runs_error_and_automation_not_a_bare_id(
    redis_client: Any,
) -> None:
    from tasks.actors import run_execution

    # given a run that failed for good, its message dead-lettered (Redis keeps no error)
    automation_id = make_automation(name="Nightly report")
    (failed,) = add_executions(
        automation_id, [{"status": "failed", "error": "step 2: agent answered HTTP 500"}]
    )
    message = run_execution.message(str(failed))
    redis_client.zadd("dramatiq:default.XQ", {"dead-1": time.time() * 1000})
    redis_client.hset("dramatiq:default.XQ.msgs", "dead-1", message.encode())
    # when the Queues page lists it
    at = open_view("queues")
    table = at.dataframe[-1].value
    # then it names the automation and the run, and shows the run's stored error
    assert list(table["Error"]) == ["step 2: agent answered HTTP 500"]
    assert list(table["Execution"]) == [f"Nightly report · execution {str(failed)[:8]}"]
    assert str(failed) not in table.to_string()


def test_workers_are_shown_by_host_and_pid_with_what_they_run(db: None, redis_client: Any) -> None:
    from tasks.workers import INDEX, KEY

    # given a worker process's beacon, holding a run of ours and one of another workspace
    beat_ms = int(time.time() * 1000)
    run_id = str(add_executions(make_automation(), [{"status": "running"}])[0])
    theirs = str(
        add_executions(make_automation(actor=make_workspace()), [{"status": "running"}])[0]
    )
    redis_client.hset(
        KEY.format(name="web-1:4242"),
        mapping={
            "host": "web-1",
            "pid": 4242,
            "queues": "default",
            "running": 2,
            "runs": f"{theirs},{run_id}",
            "processed": 17,
            "failed": 2,
            "started": beat_ms - 60_000,
            "beacon": beat_ms,
        },
    )
    redis_client.zadd(INDEX, {"web-1:4242": beat_ms})
    # when the Queues page opens
    at = open_view("queues")
    # then the worker reads as host:pid with its queues, its run and its counts
    workers = at.dataframe[1].value
    row = workers.iloc[0]
    assert (row["Worker"], row["Queues"], row["Processed"], row["Failed"]) == (
        "web-1:4242",
        "default",
        17,
        2,
    )
    # and it names only our run (another workspace's ids are not ours to see)
    assert row["Running now"] == f"2 run(s): {run_id[:8]} and 1 more"
    assert theirs[:8] not in repr(at)
    assert "Workers (1)" in [h.value for h in at.subheader]


# --- form helpers (no server) -------------------------------------------------------------


def test_steps_table_rows_follow_the_order_column_and_drop_blanks() -> None:
    rows = [
        {"order": 2, "name": "b", "message": "second"},
        {"order": 1, "name": "a", "message": "first"},
        {"order": None, "name": None, "message": None},
        {"order": float("nan"), "name": "c", "message": "added"},
    ]
    steps = forms.steps_from_rows(rows)
    assert [s.name for s in steps] == ["a", "b", "c"]


def test_steps_text_round_trips() -> None:
    steps = [{"name": "One", "message": "do it"}, {"name": "Two", "message": "a | b"}]
    parsed = forms.parse_steps_text(forms.steps_text(steps))
    assert [(s.name, s.message) for s in parsed] == [("One", "do it"), ("Two", "a | b")]
    assert forms.parse_steps_text("just a message")[0].name == "Step 1"


def test_timezone_options_put_common_zones_first() -> None:
    options = forms.timezone_options("Asia/Kathmandu")
    assert options[0] == "UTC" and "Asia/Kathmandu" in options[:20]
    assert options[-1] == forms.OTHER_ZONE and len(options) > 400


# --- audit ------------------------------------------------------------------------------


def test_the_audit_page_lists_who_did_what_and_filters_it() -> None:
    # given changes made by two people
    created = automations.create(
        automation_input(name="=cmd|' /C calc'!A0"), actor=person("alice@example.com")
    )
    automations.rotate_signing_secret(created.automation.id, actor=person("bob@example.com"))
    # when the audit page opens, then both changes are listed, newest first
    at = open_view("audit")
    frame = at.dataframe[0].value
    assert list(frame["Who"]) == ["bob@example.com", "alice@example.com"]
    assert list(frame["What"]) == ["rotate_secret", "create"]
    # and narrowing by who and by what keeps only the matching rows
    at.text_input(key="au_actor").input("ALICE").run()
    assert list(at.dataframe[0].value["What"]) == ["create"]
    at.text_input(key="au_actor").input("").run()
    at.multiselect(key="au_actions").select("rotate_secret").run()
    assert list(at.dataframe[0].value["Who"]) == ["bob@example.com"]


def test_the_audit_export_cannot_run_a_formula() -> None:
    automations.create(automation_input(name="=1+1"), actor=person("=HYPERLINK(1)"))
    with session_scope() as session:
        rows = list_audit(session, AuditFilters(), actor=ADMIN)
    text = audit_csv(rows).decode()
    assert "'=HYPERLINK(1)" in text
    assert ',"=' not in text and "\n=" not in text


FORMULAS = ('=HYPERLINK("http://127.0.0.1:9/?x="&A1,"x")', "+1+cmd|' /C calc'!A0", "@SUM(1,1)")


@pytest.mark.parametrize("view", ["automations", "executions", "overview", "schedules"])
def test_no_table_shows_a_cell_a_spreadsheet_would_run(view: str) -> None:
    # given automations named, and runs failed, with spreadsheet formulas
    for formula in FORMULAS:
        automation_id = make_automation(name=formula)
        make_schedule(automation_id)
        add_executions(automation_id, [{"status": "failed", "error": formula}])
    # when a page shows them in its tables (whose own "Download as CSV" writes what they show)
    at = open_view(view)
    assert at.dataframe, view
    cells = [
        cell
        for table in at.dataframe
        for column in table.value.columns
        for cell in table.value[column]
        if isinstance(cell, str)
    ]
    # then each is there made inert, as the Export page writes it, and none is live
    assert any(cell.startswith("'@SUM(1,1)") for cell in cells), view
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], view


def test_the_workspace_page_adds_members_and_secrets_audited() -> None:
    # given the local admin on the Workspace page
    at = open_view("workspace")
    assert "local admin" in at.dataframe[0].value.to_string()
    # when they add Bob as an editor and save a secret
    at.text_input(key="ws_member").input("Bob@Example.com").run()
    at.selectbox(key="ws_role").set_value("editor").run()
    at.button(key="ws_set_member").click().run()
    at.text_input(key="ws_secret_name").input("AGENT_TOKEN")  # in a form: sent with its button
    at.text_input(key="ws_secret_value").input("s3cret-value")  # in a form: sent with its button
    at.button(key="ws_secret_save").click().run()
    assert not at.exception, at.exception
    # then both show (the secret by name only) and both are audited by the local admin
    members = at.dataframe[0].value.to_string()
    assert "bob@example.com" in members and "editor" in members
    assert "AGENT_TOKEN" in at.dataframe[1].value.to_string()
    assert "s3cret-value" not in repr(at)
    with session_scope() as session:
        rows = list_audit(session, AuditFilters(), actor=person("local admin"))
    assert [(r.action, r.actor) for r in rows[:2]] == [
        ("set_secret", "local admin"),
        ("add_member", "local admin"),
    ]


def test_the_workspace_page_binds_a_secret_to_the_agent_origins_it_may_go_to() -> None:
    # given the local admin saving a secret with the origin it may be sent to
    at = open_view("workspace")
    at.text_input(key="ws_secret_name").input("AGENT_TOKEN")
    at.text_input(key="ws_secret_value").input("s3cret-value")
    at.text_input(key="ws_secret_origins").input("https://agent.example.com/run")
    at.button(key="ws_secret_save").click().run()  # a form: its fields go with its button
    assert not at.exception, at.exception
    assert "https://agent.example.com:443" in at.dataframe[1].value.to_string()
    # when they allow another origin instead, then the table says so and it is audited
    at.selectbox(key="ws_secret_bound").set_value("AGENT_TOKEN").run()
    at.text_input(key="ws_secret_where").input("http://127.0.0.1:8787").run()
    at.button(key="ws_secret_allow").click().run()
    assert not at.exception, at.exception
    shown = at.dataframe[1].value.to_string()
    assert "http://127.0.0.1:8787" in shown and "agent.example.com" not in shown
    # and a bad origin is refused with a message, changing nothing
    at.text_input(key="ws_secret_where").input("ftp://files.example.com").run()
    at.button(key="ws_secret_allow").click().run()
    assert "origins" in at.error[0].value.lower() and "http://127.0.0.1:8787" in shown
    with session_scope() as session:
        (row, *_) = list_audit(session, AuditFilters(), actor=person("local admin"))
    assert row.details["changed"] == {
        "origins": [["https://agent.example.com:443"], ["http://127.0.0.1:8787"]]
    }


# --- issue 13: the executions table, filters in the URL ------------------------------------


def test_executions_colour_status_and_list_runs_in_flight_before_queued_slots() -> None:
    # given a running run, a slot queued ahead of its time after it, and a finished run
    automation_id = make_automation(name="Ordered")
    base = now()
    running, ahead, done = add_executions(
        automation_id,
        [
            {"status": "running", "finished_at": None, "queued_at": base - timedelta(minutes=2)},
            {
                "status": "queued",
                "started_at": None,
                "finished_at": None,
                "queued_at": base,
                "scheduled_for": base + timedelta(minutes=5),
            },
            {"status": "failed", "error": "HTTP 500", "queued_at": base - timedelta(minutes=1)},
        ],
    )
    # when Executions opens
    at = open_view("executions")
    # then the runs in flight come first, running above the queued slot (defect 9)
    in_flight, finished = at.dataframe[0].value, at.dataframe[1].value
    assert list(in_flight["Id"]) == [str(running), str(ahead)]
    assert list(finished["Id"]) == [str(done)]
    # and the status is a coloured pill from the one palette, the error column wide
    config = at.dataframe[1].proto.columns
    assert '"Status"' in config and "#d64545" in config and '"Error": {"width": 280' in config


def test_executions_filters_are_kept_in_the_url_and_read_from_it(
    history: dict[str, uuid.UUID],
) -> None:
    # given a link with a status filter (and a value that is not a status)
    at = load_view(
        "executions", query={"status": ["failed", "bogus"], "automation": str(history["alpha"])}
    )
    # when the page opens, then the filter is applied, the bad value left out
    at.run()
    assert not at.exception, at.exception
    assert at.multiselect(key="ex_status").value == ["failed"]
    assert {tuple(v) for v in at.dataframe[0].value["Status"]} == {("failed",)}
    # and choosing another filter puts it in the URL (defect 15)
    at.selectbox(key="ex_trigger").set_value("manual").run()
    assert at.query_params["trigger"] in ("manual", ["manual"])
    assert at.query_params["status"] in ("failed", ["failed"])
    at.multiselect(key="ex_status").unselect("failed").run()
    assert "status" not in at.query_params


def test_the_failed_runs_of_a_filter_are_retried_after_a_count_and_a_confirmation() -> None:
    # given three failed runs and a succeeded one of one automation, a failed one of another
    mine = make_automation(name="Mine")
    failed = add_executions(mine, [{"status": "failed", "error": "HTTP 503"}] * 3)
    add_executions(mine, [{"status": "succeeded"}])
    (other,) = add_executions(make_automation(name="Other"), [{"status": "failed"}])
    at = open_view("executions")
    # when the filter is narrowed to the first automation
    at.selectbox(key="ex_automation").set_value(str(mine)).run()
    # then the button counts its failed runs, and nothing happens before the confirmation
    at.button(key="ex_bulk_retry").click().run()
    assert "Retry 3 failed run(s)? Each resumes at the step that failed." in texts(at)
    assert {queries_status(r) for r in failed} == {"failed"}
    at.button(key="ex_bulk_yes").click().run()
    assert not at.exception, at.exception
    # and once confirmed, those three are queued again (each audited), the other stays failed
    assert {queries_status(r) for r in failed} == {"queued"}
    assert queries_status(other) == "failed"
    assert "3 failed run(s) queued again." in texts(at)
    with session_scope() as session:
        audit = list_audit(session, AuditFilters(), actor=ADMIN)
    assert [a.action for a in audit].count("retry") == 3
    # and a filter on succeeded runs offers no retry
    at.multiselect(key="ex_status").set_value(["succeeded"]).run()
    assert not [b for b in at.button if b.key == "ex_bulk_retry"]


def test_a_viewer_gets_no_bulk_retry_and_a_forged_one_is_refused() -> None:
    from core.errors import Forbidden
    from service import executions

    add_executions(make_automation(), [{"status": "failed"}])
    viewer = person("vera@example.com", "viewer")
    at = load_view("executions", acting=viewer)
    at.run()
    assert not at.exception and not [b for b in at.button if b.key == "ex_bulk_retry"]
    before = table_snapshot()
    with pytest.raises(Forbidden):
        executions.retry_failed(ExecutionFilters(), actor=viewer)
    assert table_snapshot() == before


def queries_status(execution_id: uuid.UUID) -> str:
    with session_scope() as session:
        detail = queries.execution_detail(session, execution_id, actor=ADMIN)
    assert detail is not None
    return detail.execution.status


def test_executions_are_listed_by_the_time_shown_first() -> None:
    # given a run of the 02:33 slot queued then, and a backfill of the 00:30 slot queued later
    automation_id = make_automation(name="Backfilled")
    base = now()
    slot, backfill = add_executions(
        automation_id,
        [
            {"queued_at": base - timedelta(hours=2), "trigger": "schedule"},
            {
                "queued_at": base - timedelta(minutes=5),
                "scheduled_for": base - timedelta(hours=4),
                "trigger": "backfill",
            },
        ],
    )
    # when Executions opens
    at = open_view("executions")
    frame = at.dataframe[0].value
    # then the first time column is the one the rows are ordered by, and the caption says so
    times = [c for c in frame.columns if c in ("Queued", "Scheduled for")]
    assert times[0] == "Queued", list(frame.columns)
    assert list(frame["Id"]) == [str(backfill), str(slot)]
    assert list(frame["Queued"]) == sorted(frame["Queued"], reverse=True)
    assert any("newest queued first" in c.value for c in at.caption)


def test_executions_are_searched_by_error_text() -> None:
    # given runs failed with different errors (one with a LIKE wildcard in it)
    automation_id = make_automation(name="Searched")
    timeout, refused, odd = add_executions(
        automation_id,
        [
            {"status": "failed", "error": "step 1: agent timed out after 30 s"},
            {"status": "failed", "error": "step 2: connection refused"},
            {"status": "failed", "error": "step 1: 100% of quota used"},
        ],
    )
    add_executions(automation_id, [{"status": "succeeded"}])
    # when a part of an error is typed, in any case
    at = open_view("executions")
    at.text_input(key="ex_error").input("TIMED OUT").run()
    # then only the runs whose error holds it are listed, and the link keeps it
    assert list(at.dataframe[0].value["Id"]) == [str(timeout)]
    assert at.query_params["error"] in ("TIMED OUT", ["TIMED OUT"])
    # and % is matched as itself, not as a wildcard
    at.text_input(key="ex_error").input("0%").run()
    assert list(at.dataframe[0].value["Id"]) == [str(odd)]
    assert refused


def test_the_open_runs_of_a_filter_are_cancelled_in_bulk_and_audited() -> None:
    # given two queued runs and a running one of one automation, a queued one of another
    # and a finished one
    ours = make_automation(name="Bulk cancelled")
    theirs = make_automation(name="Left alone")
    open_rows = [
        {"status": "queued", "started_at": None, "finished_at": None},
        {"status": "queued", "started_at": None, "finished_at": None},
        {"status": "running", "finished_at": None},
    ]
    cancelled = add_executions(ours, [*open_rows, {"status": "succeeded"}])[:3]
    (other,) = add_executions(theirs, [open_rows[0]])
    # when Executions is filtered to the first automation and its open runs are cancelled
    at = open_view("executions", query={"automation": str(ours)})
    at.button(key="ex_bulk_cancel").click().run()
    assert any("Cancel 3 queued, running or waiting run(s)" in w.value for w in at.warning)
    at.button(key="ex_cancel_yes").click().run()
    assert not at.exception, at.exception
    # then those three are cancelled, each audited; the other automation's run is not
    assert "3 run(s) cancelled." in texts(at)
    assert {execution(e).status for e in cancelled} == {"cancelled"}
    assert execution(other).status == "queued"
    with session_scope() as session:
        audited = list_audit(session, AuditFilters(actions=("cancel",)), actor=ADMIN)
    assert {r.target_id for r in audited} == set(cancelled)


def test_the_audit_page_names_objects_and_links_to_them() -> None:
    from service import schedules as schedule_service

    # given an automation created, a schedule of it paused, and a run of it cancelled
    automation_id = make_automation(name="Named report")
    schedule_id = make_schedule(automation_id, cron_expr="0 3 * * *")
    schedule_service.pause(schedule_id, actor=ADMIN)
    run = make_execution(automation_id)
    executions_service.cancel(run, actor=ADMIN)
    # when the audit page opens
    frame = open_view("audit").dataframe[0].value
    by_id = {row["Id"]: row for _, row in frame.iterrows()}
    # then each row names its object and links to its page, not a bare id
    assert by_id[str(schedule_id)]["Name"] == "Named report · 0 3 * * *"
    assert by_id[str(schedule_id)]["Open"] == f"schedule?id={schedule_id}"
    assert by_id[str(run)]["Name"].startswith("Named report · run of ")
    assert by_id[str(run)]["Open"] == f"execution?id={run}"
    assert by_id[str(automation_id)]["Name"] == "Named report"
    assert by_id[str(automation_id)]["Open"] == f"executions?automation={automation_id}"
