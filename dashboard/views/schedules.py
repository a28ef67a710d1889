"""Schedules: every schedule with its timing, next run and record; pause, run, edit, delete."""

from __future__ import annotations

import uuid

import pandas as pd
import streamlit as st

from core.errors import StepwiseError
from core.vocabulary import OPEN_STATUSES, Permission, ScheduleState
from dashboard import ui
from dashboard.schedule_dialog import STATE, notify_scheduler, open_dialog, schedule_dialog
from db import commands, queries
from db.queries import ExecutionFilters
from tasks import actions

st.title("Schedules")
ui.scheduler_warning()
if flash := st.session_state.pop("flash", None):
    st.success(flash)
if started := st.session_state.pop("started_run", None):
    st.success("Run started: follow it on its page.", icon=":material/play_circle:")
    ui.run_link(started, f"Started run {started}")

names = ui.read(queries.automation_names)
if not names:
    ui.empty_state(
        "No automation yet, so nothing to schedule.",
        "Create one on the Automations page first, then come back to schedule it.",
    )
    st.stop()

top = st.columns([2, 2, 1])
top[0].selectbox(
    "Automation",
    ["", *map(str, names)],
    format_func=lambda i: names[uuid.UUID(i)] if i else "All automations",
    key="sch_automation",
)
top[1].selectbox(
    "Status", ["", *ScheduleState], format_func=lambda s: s or "All statuses", key="sch_state"
)
editor = ui.can(Permission.EDIT)
if editor:
    top[2].button(
        "New schedule",
        icon=":material/add:",
        type="primary",
        on_click=open_dialog,
        kwargs={"automation_id": st.session_state.get("sch_automation") or next(iter(names))},
        width="stretch",
    )


def timing(row: queries.ScheduleRow) -> str:
    try:
        return row.describe()
    except StepwiseError:
        return "invalid schedule"


def load() -> list[queries.ScheduleRow]:
    automation = st.session_state.get("sch_automation")
    return ui.read(
        queries.list_schedules,
        automation_id=uuid.UUID(automation) if automation else None,
        state=st.session_state.get("sch_state") or None,
    )


def table(rows: list[queries.ScheduleRow]) -> pd.DataFrame:
    viewer = ui.viewer_timezone()
    return pd.DataFrame(
        {
            "Automation": [r.automation_name for r in rows],
            "Runs when": [timing(r) for r in rows],
            "Cron": [
                r.cron_expr or (f"every {r.interval_s} s" if r.interval_s else "once") for r in rows
            ],
            "Next run": [ui.fmt_time(r.next_run_at, r.timezone) for r in rows],
            f"Your time ({viewer})": [ui.fmt_time(r.next_run_at, viewer) for r in rows],
            "State": [
                ui.badge(r.state) + (f" ({r.completed_reason})" if r.completed_reason else "")
                for r in rows
            ],
            "Last": [ui.status_cell(r.last_status) for r in rows],
            "Runs": [r.run_count for r in rows],
            "Success": [ui.rate_cell(r.success_rate) for r in rows],
            "Missed / skipped": [f"{r.missed_count} / {r.skipped_count}" for r in rows],
            "Queued": [r.queued_runs for r in rows],
        }
    )


@st.fragment(run_every=15)
def schedule_list() -> None:
    rows = load()
    if not rows:
        if st.session_state.get("sch_automation") or st.session_state.get("sch_state"):
            ui.empty_state("No schedule matches these filters.", "Clear the filters above.")
        else:
            ui.empty_state(
                "No schedule yet.", "Press **New schedule** to run an automation on a timetable."
            )
        return
    st.dataframe(
        table(rows),
        hide_index=True,
        width="stretch",
        column_config={
            "Last": ui.status_column("Last"),
            "Success": ui.rate_column("Success", [r.success_rate for r in rows]),
        },
    )


schedule_list()

rows = load()
if rows and editor:
    st.subheader("Act on a schedule")
    by_id = {str(r.id): r for r in rows}
    chosen = st.selectbox(
        "Schedule",
        list(by_id),
        format_func=lambda i: f"{by_id[i].automation_name} · {timing(by_id[i])} · {by_id[i].state}",
        key="sch_selected",
    )
    row = by_id[chosen]
    cols = st.columns(4)
    if row.enabled:
        if cols[0].button("Pause", icon=":material/pause:", key="sch_pause", width="stretch"):
            ui.write(commands.set_schedule_enabled, row.id, False, actor=ui.actor())
            st.session_state["flash"] = (
                "Schedule paused; runs of its future slots that had not started were withdrawn "
                "(a resume runs every slot from then on)."
            )
            st.rerun()
    elif cols[0].button("Resume", icon=":material/play_arrow:", key="sch_resume", width="stretch"):
        try:
            ui.write(commands.set_schedule_enabled, row.id, True, actor=ui.actor())
        except StepwiseError as exc:
            st.error(ui.text(exc))
        else:
            notify_scheduler()
            st.session_state["flash"] = (
                "Schedule resumed from its next slot (the pause is not replayed)."
            )
            st.rerun()
    if cols[1].button("Run now", icon=":material/play_circle:", key="sch_run", width="stretch"):
        execution_id = actions.run_now(row.automation_id, actor=ui.actor(), run_input=row.input)
        st.session_state["started_run"] = str(execution_id)
        st.rerun()
    cols[2].button(
        "Edit",
        icon=":material/edit:",
        key="sch_edit",
        on_click=open_dialog,
        args=(row,),
        width="stretch",
    )
    if cols[3].button("Delete", icon=":material/delete:", key="sch_delete", width="stretch"):
        st.session_state["sch_confirm_delete"] = chosen
    if st.session_state.get("sch_confirm_delete") == chosen:
        open_runs = ui.read(
            queries.count_executions,
            ExecutionFilters(statuses=OPEN_STATUSES, schedule_id=row.id),
        )
        st.warning(
            f"Delete this schedule? Its {open_runs} open run(s), queued or running, will be "
            "cancelled (a running one stops before its next step); finished runs stay in the "
            "history."
        )
        yes, no = st.columns(2)
        if yes.button("Yes, delete it", type="primary", key="sch_delete_yes"):
            cancelled = ui.write(commands.delete_schedule, row.id, actor=ui.actor())
            st.session_state.pop("sch_confirm_delete", None)
            st.session_state["flash"] = f"Schedule deleted; {cancelled} open run(s) cancelled."
            st.rerun()
        if no.button("Keep it", key="sch_delete_no"):
            st.session_state.pop("sch_confirm_delete", None)
            st.rerun()

if st.session_state.get(STATE) is not None:
    schedule_dialog()
