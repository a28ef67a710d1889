"""Executions: runs in flight, then the run history, filtered and paged in SQL; a click on
a row opens the run's own page."""

from __future__ import annotations

import uuid
from datetime import timedelta

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import grid, ui
from dashboard.filters import history_filters, selection
from db import figures, queries

PAGE_SIZES = (25, 50, 100)

# Old links (/executions?execution=<id>) open the run's own page.
if (wanted := st.query_params.get("execution")) is not None:
    ui.open_run(wanted)

st.title("Executions")
ui.scheduler_warning()
if flash := st.session_state.pop("flash", None):
    st.success(flash)

filters = history_filters("ex")


def history_table(rows: list[queries.ExecutionRow]) -> pd.DataFrame:
    # What tells runs apart comes first, the error included: at 1440 px nothing after
    # "Scheduled for" needs scrolling to.
    return pd.DataFrame(
        {
            "Status": [ui.status_cell(r.status) for r in rows],
            "Automation": [r.automation_name for r in rows],
            "Steps": [r.steps_done for r in rows],
            "Error": [r.error or "" for r in rows],
            "Scheduled for": [ui.fmt_time(r.scheduled_for) for r in rows],
            "Duration": [ui.fmt_duration(r.duration_s) for r in rows],
            "Trigger": [r.trigger for r in rows],
            "Attempt": [r.attempt for r in rows],
            "Queued": [ui.fmt_time(r.queued_at) for r in rows],
            "Id": [str(r.id) for r in rows],
        }
    )


COLUMNS = {
    "Status": ui.status_column(width=100),
    "Automation": st.column_config.TextColumn(width=170),
    "Steps": st.column_config.TextColumn(width=150),
    "Error": st.column_config.TextColumn(width=300),
    "Scheduled for": st.column_config.TextColumn(width=170),
    "Duration": st.column_config.TextColumn(width=80),
    "Trigger": st.column_config.TextColumn(width=80),
    "Attempt": st.column_config.NumberColumn(width=70),
    "Id": st.column_config.TextColumn(width=90),
}


def runs_table(rows: list[queries.ExecutionRow], key: str) -> None:
    """A table of runs; a click on a row opens that run's page."""
    event = st.dataframe(
        history_table(rows),
        hide_index=True,
        width="stretch",
        column_config=COLUMNS,
        on_select="rerun",
        selection_mode="single-row",
        key=key,
    )
    if chosen := event.selection.rows:
        ui.open_run(rows[chosen[0]].id)


def _move(offset: int) -> None:
    st.session_state["ex_offset"] = offset


@st.fragment(run_every=10)
def history() -> None:
    page_size = st.session_state.get("ex_page_size", PAGE_SIZES[0])  # chosen under the table
    # A different filter or page size starts again at the first page.
    # (As chosen: "last 24 hours" is the same choice a minute later.)
    if st.session_state.get("ex_filters") != (selection("ex"), page_size):
        st.session_state["ex_filters"] = (selection("ex"), page_size)
        st.session_state["ex_offset"] = 0
    offset = st.session_state.get("ex_offset", 0)
    # Runs in flight first (running, then queued by slot), then the finished ones by
    # time: a slot queued ahead of its time no longer sorts above the run in progress.
    if offset == 0 and (current := ui.read(queries.runs_in_flight, filters)):
        st.subheader("In flight")
        runs_table(current, "ex_in_flight")
        st.subheader("Finished")
    page = ui.read(queries.list_executions, filters, limit=page_size, offset=offset, settled=True)
    if not page.rows and offset:  # the page emptied under us (retention, filters)
        st.session_state["ex_offset"] = offset = 0
        page = ui.read(queries.list_executions, filters, limit=page_size, offset=0, settled=True)
    if not page.rows:
        if filters == queries.ExecutionFilters():
            ui.empty_state(
                "No finished run yet.",
                "Runs appear here once a schedule fires, or press Run now on Schedules "
                "(or Test run on Automations).",
            )
        else:
            ui.empty_state(
                "No finished run matches these filters.", "Widen the time range or clear filters."
            )
        return
    runs_table(page.rows, "ex_table")
    st.caption("Click a row to open the run.")
    prev, label, size, nxt = st.columns([1, 3, 1, 1], vertical_alignment="center")
    size.selectbox(
        "Rows per page",
        PAGE_SIZES,
        key="ex_page_size",
        format_func=lambda n: f"{n} a page",
        label_visibility="collapsed",
    )
    prev.button(
        "← Newer",
        disabled=offset == 0,
        key="ex_prev",
        on_click=_move,
        args=(max(offset - page_size, 0),),
        width="stretch",
    )
    label.caption(f"Rows {offset + 1} to {offset + len(page.rows)}, newest first")
    nxt.button(
        "Older →",
        disabled=not page.has_more,
        key="ex_next",
        on_click=_move,
        args=(offset + page_size,),
        width="stretch",
    )


@st.fragment(run_every=10)
def run_grid(automation_id: uuid.UUID) -> None:
    found = ui.read(queries.run_grid, automation_id)
    if not found.runs:
        return
    st.subheader("Run grid")
    event = st.altair_chart(
        grid.chart(found),
        width="stretch",
        height=grid.height(found),
        on_select="rerun",
        key="ex_grid",
    )
    if (chosen := grid.chosen_run(event)) is not None:
        ui.open_run(chosen)
    st.caption("Recent runs of this automation; click a cell to open its run.")


if filters.automation_id is not None:
    run_grid(filters.automation_id)
history()

st.subheader("Per schedule, last 7 days")
now = ui.read_deployment(figures.scheduler_liveness).now
stats = ui.read(
    figures.schedule_stats, since=now - timedelta(days=7), automation_id=filters.automation_id
)
if not stats:
    ui.empty_state(
        "No scheduled run finished in the last 7 days.",
        "Schedule an automation; its success rate and durations show here.",
    )
else:
    labels = ui.read(queries.schedule_labels)
    frame = pd.DataFrame(
        {
            "Schedule": [labels.get(s.schedule_id, str(s.schedule_id)[:8]) for s in stats],
            "Runs": [s.runs for s in stats],
            "Success rate": [ui.rate_cell(s.success_rate) for s in stats],
            "p50 (s)": [s.p50_s for s in stats],
            "p95 (s)": [s.p95_s for s in stats],
        }
    )
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        column_config={
            "Success rate": ui.rate_column("Success rate", [s.success_rate for s in stats]),
            "p50 (s)": st.column_config.NumberColumn(format="%.2f"),
            "p95 (s)": st.column_config.NumberColumn(format="%.2f"),
        },
    )
    long = frame.melt(id_vars="Schedule", value_vars=["p50 (s)", "p95 (s)"], var_name="Percentile")
    st.altair_chart(
        alt.Chart(long)
        .mark_bar()
        .encode(
            y=alt.Y("Schedule:N", title=None),
            x=alt.X("value:Q", title="duration (s)"),
            color="Percentile:N",
            yOffset="Percentile:N",
            tooltip=["Schedule", "Percentile", "value"],
        )
        .properties(height=max(120, 50 * len(frame))),
        width="stretch",
    )
