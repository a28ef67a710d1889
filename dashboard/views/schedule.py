"""One schedule on its own page (`/schedule?id=<schedule id>`): its timing in words, the
next 10 runs, its record and recent runs; pause with a note, resume, run now, backfill a
range and edit, for those whose role allows it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from core.errors import StepwiseError
from core.limits import MAX_PAUSE_NOTE
from core.timing import parse_timing, spec_of
from core.vocabulary import AuditAction, AuditTarget, Permission, ScheduleState, Trigger
from dashboard import backfill_form, ui
from dashboard.executions_table import executions_table
from dashboard.schedule_dialog import STATE, next_runs, open_dialog
from dashboard.schedule_dialog import schedule_dialog as edit_dialog
from db import queries
from db.audit import AuditFilters, list_audit
from db.queries import ExecutionFilters
from service import schedules

RECENT = 20

ui.page_link("views/schedules.py", "All schedules", icon=":material/arrow_back:")
if flash := st.session_state.pop("sp_flash", None):
    st.success(flash)
if started := st.session_state.pop("sp_started", None):
    st.success("Run started: follow it on its page.", icon=":material/play_circle:")
    ui.execution_link(started)


def not_found(why: str) -> None:
    st.title("Schedule not found")
    st.warning(why, icon=":material/search_off:")
    ui.page_link("views/schedules.py", "All schedules", icon=":material/calendar_month:")
    st.stop()


schedule_id = ui.uuid_or_none(st.query_params.get("id"))
if schedule_id is None:
    not_found("Schedule not found: the link has no valid schedule id.")
assert schedule_id is not None
row = ui.read(queries.get_schedule_row, schedule_id)
if row is None:
    not_found("Schedule not found in this workspace (or deleted).")
assert row is not None


def timing_words(row: queries.ScheduleRow) -> str:
    try:
        return row.description
    except StepwiseError:
        return "invalid schedule"


def header(row: queries.ScheduleRow) -> None:
    st.markdown(f"## {ui.text(row.automation_name)} {ui.badge_md(row.state)}")
    expression = f" `{row.cron_expr}`" if row.cron_expr else ""
    st.caption(f"Schedule `{row.id}` · {row.kind}{expression} · {row.timezone}")
    st.info(f"**{ui.text(timing_words(row))}**", icon=":material/event_repeat:")
    if row.state == ScheduleState.PAUSED:
        who = f" by {ui.text(row.paused_by)}" if row.paused_by else ""
        when = f" on {ui.fmt_time(row.paused_at)}" if row.paused_at else ""
        note = f": {ui.text(row.pause_note)}" if row.pause_note else ""
        st.warning(f"Paused{who}{when}{note}", icon=":material/pause_circle:")
    elif row.state == ScheduleState.COMPLETED:
        st.info(f"Completed: {ui.text(row.stopped_because)}", icon=":material/task_alt:")


@st.fragment(run_every=10)
def record(schedule_id: uuid.UUID) -> None:
    """Its counters, redrawn as runs come and go."""
    now = ui.read(queries.get_schedule_row, schedule_id)
    if now is None:
        st.warning("This schedule was deleted.")
        return
    # One line of facts rather than metric tiles: tiles stack to a screen on a phone.
    st.markdown(
        f"**Runs** {now.run_count} · **Success** {ui.fmt_rate(now.success_rate)} · "
        f"**Missed** {now.missed_count} · **Skipped** {now.skipped_count} · "
        f"**Queued** {now.queued_runs}"
    )
    st.caption(
        f"Next run {ui.fmt_time(now.next_run, now.timezone) if now.enabled else now.state} · "
        f"last run {ui.fmt_time(now.last_run_at, now.timezone)} ({now.last_status or 'none'})"
    )


# What tells a schedule's runs apart: its automation is the same on every row.
# Newest queued first (`queries.HISTORY_ORDER`), so that time leads.
EXECUTION_COLUMNS = [
    "Status",
    "Queued",
    "Scheduled for",
    "Trigger",
    "Steps",
    "Duration",
    "Error",
    "Attempt",
]


@st.fragment(run_every=10)
def recent_executions(schedule_id: uuid.UUID) -> None:
    st.subheader("Recent executions")
    page = ui.read(queries.list_executions, ExecutionFilters(schedule_id=schedule_id), limit=RECENT)
    if not page.rows:
        ui.empty_state(
            "No execution of this schedule yet.", "Executions appear here as its slots come due."
        )
        return
    executions_table(page.rows, "sp_runs", EXECUTION_COLUMNS)
    st.caption("Click a row to open the execution.")
    ui.page_link(
        "views/executions.py",
        "All executions of this schedule",
        icon=":material/history:",
        query_params={"schedule": str(schedule_id)},
    )


def actions_row(row: queries.ScheduleRow) -> None:
    editor, runner = ui.can(Permission.EDIT), ui.can(Permission.RUN)
    if row.enabled and editor:
        st.text_input(
            "Pause note (optional)",
            max_chars=MAX_PAUSE_NOTE,
            key="sp_note",
            placeholder="Why is it paused? Shown with the schedule until it resumes.",
        )
    buttons = st.container(horizontal=True)
    try:
        if row.enabled and editor:
            if buttons.button("Pause", icon=":material/pause:", key="sp_pause"):
                note = st.session_state.get("sp_note")
                ui.write(schedules.pause, row.id, actor=ui.actor(), note=note)
                st.session_state["sp_flash"] = "Schedule paused; future runs were withdrawn."
                st.rerun()
        elif editor and buttons.button("Resume", icon=":material/play_arrow:", key="sp_resume"):
            ui.write(schedules.resume, row.id, actor=ui.actor())
            st.session_state["sp_flash"] = "Schedule resumed from its next slot."
            st.rerun()
        if runner and buttons.button("Run now", icon=":material/play_circle:", key="sp_run"):
            started = schedules.run_now(row.id, actor=ui.actor())
            st.session_state["sp_started"] = str(started)
            st.rerun()
        if editor:
            buttons.button(
                "Edit", icon=":material/edit:", key="sp_edit", on_click=open_dialog, args=(row,)
            )
    except StepwiseError as exc:
        st.error(ui.text(exc))


def upcoming(row: queries.ScheduleRow) -> None:
    st.subheader("Next 10 runs" + ("" if row.enabled else " (if resumed now)"))
    try:
        timing = parse_timing(spec_of(row))
    except StepwiseError as exc:
        st.error(ui.text(exc))
        return
    if row.state == ScheduleState.COMPLETED or not next_runs(timing, datetime.now(UTC)):
        st.caption("No run is left in the future.")


def runs_by_hand(schedule_id: uuid.UUID) -> None:
    """Its runs started with "Run now" (stored with the schedule, trigger manual)."""
    filters = ExecutionFilters(schedule_id=schedule_id, trigger=Trigger.MANUAL)
    page = ui.read(queries.list_executions, filters, limit=RECENT)
    st.subheader("Runs started by hand")
    if not page.rows:
        st.caption("None: every run of this schedule came from its timing.")
        return
    executions_table(page.rows, "sp_manual_runs", EXECUTION_COLUMNS)


def pause_history(schedule_id: uuid.UUID) -> None:
    """Who paused and resumed it, when, and the note given (from the audit log)."""
    filters = AuditFilters(
        actions=(AuditAction.PAUSE, AuditAction.RESUME),
        target_types=(AuditTarget.SCHEDULE,),
        target_id=schedule_id,
    )
    rows = ui.read(list_audit, filters, limit=50)
    st.subheader("Pause history")
    if not rows:
        st.caption("Never paused.")
        return
    st.dataframe(
        pd.DataFrame(
            {
                "When": [ui.fmt_time(r.at) for r in rows],
                "Who": [r.actor for r in rows],
                "What": [{"pause": "paused", "resume": "resumed"}[r.action] for r in rows],
                "Note": [str(r.details.get("note") or "") for r in rows],
            }
        ),
        hide_index=True,
        width="stretch",
        column_config={"Note": st.column_config.TextColumn(width="large")},
    )


header(row)
record(row.id)
if ui.can(Permission.EDIT) or ui.can(Permission.RUN):
    actions_row(row)
upcoming(row)
recent_executions(row.id)
runs_by_hand(row.id)
pause_history(row.id)
if ui.can(Permission.RUN):
    backfill_form.render(row)
if st.session_state.get(STATE) is not None:
    edit_dialog()
