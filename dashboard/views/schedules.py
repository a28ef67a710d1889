"""Schedules: every schedule with its timing, next run and record. A click on a row opens the
schedule's own page; ticked rows are paused (with a note), resumed, run or deleted at once."""

from __future__ import annotations

import uuid
from typing import Any

import pandas as pd
import streamlit as st

from core.errors import StepwiseError
from core.limits import MAX_PAUSE_NOTE
from core.vocabulary import OPEN_STATUSES, Permission, ScheduleState
from dashboard import ui
from dashboard.schedule_dialog import STATE, open_dialog, schedule_dialog
from db import queries
from db.queries import ExecutionFilters
from service import schedules

st.title("Schedules")
ui.scheduler_warning()
if flash := st.session_state.pop("flash", None):
    st.success(flash)
if started := st.session_state.pop("started", None):
    st.success("Run started: follow it on its page.", icon=":material/play_circle:")
    ui.execution_link(started)

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
runner = ui.can(Permission.RUN)
if editor:
    top[2].button(
        "New schedule",
        icon=":material/add:",
        type="primary",
        on_click=open_dialog,
        kwargs={"automation_id": st.session_state.get("sch_automation") or next(iter(names))},
        width="stretch",
    )


NOTES_SHOWN = 5  # notes listed under the table; the rest are on their schedules' pages


def timing(row: queries.ScheduleRow) -> str:
    """The timing in words, its zone by city ("At 03:00 AM (Berlin)"): the full name cut the
    cell off at 1440 px, and the schedule's page names it in full."""
    try:
        words = row.description
    except StepwiseError:
        return "invalid schedule"
    zone = f"({row.timezone})"
    if not words.endswith(zone):
        return words
    city = row.timezone.rsplit("/", 1)[-1].replace("_", " ")
    return f"{words.removesuffix(zone)}({city})"


def load() -> list[queries.ScheduleRow]:
    automation = st.session_state.get("sch_automation")
    return ui.read(
        queries.list_schedules,
        automation_id=uuid.UUID(automation) if automation else None,
        state=st.session_state.get("sch_state") or None,
    )


def why(row: queries.ScheduleRow) -> str | None:
    """Why a schedule is not running: the completed reason, or the note it was paused with."""
    return row.stopped_because or row.pause_note


def notes(rows: list[queries.ScheduleRow]) -> None:
    """Each paused or completed schedule's note under the table, one a line: in a cell of
    its own it was cut off at 1440 px ("paused · Agent maintenan…")."""
    noted = [r for r in rows if why(r)]
    for row in noted[:NOTES_SHOWN]:
        st.caption(f"**{ui.text(row.automation_name)}** {row.state}: {ui.text(why(row))}")
    if len(noted) > NOTES_SHOWN:
        st.caption(f"{len(noted) - NOTES_SHOWN} more note(s) on their schedules' pages.")


def table(rows: list[queries.ScheduleRow]) -> pd.DataFrame:
    viewer = ui.viewer_timezone()
    return pd.DataFrame(
        {
            "Automation": [r.automation_name for r in rows],
            "Runs when": [timing(r) for r in rows],
            # In the viewer's zone, which each cell names ("Nov 27, 09:00 CET"): a header
            # with the zone's full name was cut off at 1440 px.
            "Next run": [
                ui.fmt_short(r.next_run, viewer) if r.enabled else str(r.state) for r in rows
            ],
            "State": [str(r.state) for r in rows],
            "Last": [ui.status_cell(r.last_status) for r in rows],
            "Runs": [r.run_count for r in rows],
            "Success": [ui.rate_cell(r.success_rate) for r in rows],
            "Missed / skipped": [f"{r.missed_count} / {r.skipped_count}" for r in rows],
            "Queued": [r.queued_runs for r in rows],
        }
    )


def columns(rows: list[queries.ScheduleRow]) -> dict[str, Any]:
    # Widths that fit every column at 1440 px beside the sidebar (defect 8: the record
    # columns were cut off), and in them a name of some 25 characters, a timing by city, a
    # next run with its zone; the schedule's page shows the rest in full.
    return {
        "Automation": st.column_config.TextColumn(width=185),
        "Runs when": st.column_config.TextColumn(width=170),
        "Next run": st.column_config.TextColumn(width=130),
        "State": st.column_config.TextColumn(width=80),
        "Last": ui.status_column("Last", width=80),
        "Runs": st.column_config.NumberColumn(width=50),
        "Success": ui.rate_column("Success", [r.success_rate for r in rows], width=65),
        "Missed / skipped": st.column_config.TextColumn(width=120),
        "Queued": st.column_config.NumberColumn(width=65),
    }


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
    event = ui.dataframe(
        table(rows),
        hide_index=True,
        width="stretch",
        column_config=columns(rows),
        on_select="rerun",
        selection_mode=["multi-row", "single-cell"],
        key="sch_table",
    )
    if event.selection.cells:
        (index, _column), *_ = event.selection.cells
        ui.open_schedule(rows[index].id)
    notes(rows)
    st.caption("Click a schedule to open its page; tick rows to act on several at once.")
    chosen = [rows[i] for i in event.selection.rows if i < len(rows)]
    if chosen and (editor or runner):
        bulk_actions(chosen)


def bulk_actions(chosen: list[queries.ScheduleRow]) -> None:
    """Pause (with a note), resume, run now or delete the selected schedules."""
    st.markdown(f"**{len(chosen)} selected**")
    if editor:
        st.text_input(
            "Pause note (optional)",
            max_chars=MAX_PAUSE_NOTE,
            key="sch_note",
            placeholder="Why are they paused? Shown with each until it resumes.",
        )
    bar = st.container(horizontal=True)
    done: str | None = None
    try:
        if editor and bar.button("Pause", icon=":material/pause:", key="sch_pause"):
            note = st.session_state.get("sch_note")
            for row in chosen:
                ui.write(schedules.pause, row.id, actor=ui.actor(), note=note)
            done = f"{len(chosen)} schedule(s) paused; runs of their future slots were withdrawn."
        if editor and bar.button("Resume", icon=":material/play_arrow:", key="sch_resume"):
            for row in chosen:
                ui.write(schedules.resume, row.id, actor=ui.actor())
            done = f"{len(chosen)} schedule(s) resumed from their next slot (no replay)."
        if runner and bar.button("Run now", icon=":material/play_circle:", key="sch_run"):
            for row in chosen:
                st.session_state["started"] = str(schedules.run_now(row.id, actor=ui.actor()))
            done = f"{len(chosen)} run(s) started."
        if editor and bar.button("Delete", icon=":material/delete:", key="sch_delete"):
            st.session_state["sch_confirm_delete"] = [str(r.id) for r in chosen]
    except StepwiseError as exc:
        st.error(ui.text(exc))
    if done:
        st.session_state["flash"] = done
        st.rerun()
    if st.session_state.get("sch_confirm_delete") == [str(r.id) for r in chosen]:
        confirm_delete(chosen)


def confirm_delete(chosen: list[queries.ScheduleRow]) -> None:
    open_runs = sum(
        ui.read(
            queries.count_executions,
            ExecutionFilters(statuses=OPEN_STATUSES, schedule_id=row.id),
        )
        for row in chosen
    )
    st.warning(
        f"Delete {len(chosen)} schedule(s)? Their {open_runs} open run(s), queued, running or "
        "waiting, will be cancelled (a running one stops before its next step); finished runs "
        "stay in the history."
    )
    yes = no = st.container(horizontal=True)
    if yes.button("Yes, delete", type="primary", key="sch_delete_yes"):
        cancelled = sum(ui.write(schedules.delete, r.id, actor=ui.actor()) for r in chosen)
        st.session_state.pop("sch_confirm_delete", None)
        st.session_state["flash"] = (
            f"{len(chosen)} schedule(s) deleted; {cancelled} open run(s) cancelled."
        )
        st.rerun()
    if no.button("Keep them", key="sch_delete_no"):
        st.session_state.pop("sch_confirm_delete", None)
        st.rerun()


schedule_list()

if st.session_state.get(STATE) is not None:
    schedule_dialog()
