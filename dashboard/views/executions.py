"""Executions: those in flight, then the history, filtered and paged in SQL; a click on a
row opens the execution's own page."""

from __future__ import annotations

import uuid
from datetime import timedelta

import altair as alt
import pandas as pd
import streamlit as st

from core.errors import StepwiseError
from core.limits import MAX_BULK
from core.vocabulary import Permission
from dashboard import grid, ui
from dashboard.executions_table import IN_FLIGHT_COLUMNS, executions_table
from dashboard.filters import history_filters, selection
from db import figures, queries
from service import executions

PAGE_SIZES = (25, 50, 100)

# Old links (/executions?execution=<id>) open the execution's own page.
if (wanted := st.query_params.get("execution")) is not None:
    ui.open_execution(wanted)

st.title("Executions")
ui.scheduler_warning()
if flash := st.session_state.pop("flash", None):
    st.success(flash)

filters = history_filters("ex")


def bulk_retry(filters: queries.ExecutionFilters) -> None:
    """ "Retry the failed runs of this filter": the count first, then one confirmation."""
    failed = executions.failed_of(filters)
    count = 0 if failed is None else ui.read(queries.count_executions, failed)
    if not count:
        return
    if st.session_state.get("ex_confirm_retry") != filters:
        if st.button(
            f"Retry the failed runs of this filter ({count})",
            icon=":material/replay:",
            key="ex_bulk_retry",
        ):
            st.session_state["ex_confirm_retry"] = filters
            st.rerun()
        return
    retried = min(count, MAX_BULK)
    more = f" (the newest {MAX_BULK}; retry again for the rest)" if count > MAX_BULK else ""
    st.warning(
        f"Retry {retried} failed run(s){more}? Each resumes at the step that failed.",
        icon=":material/replay:",
    )
    yes = no = st.container(horizontal=True)
    if yes.button(f"Yes, retry {retried}", type="primary", key="ex_bulk_yes"):
        try:
            queued = executions.retry_failed(filters, actor=ui.actor())
        except StepwiseError as exc:
            st.error(ui.text(exc))
            return
        st.session_state.pop("ex_confirm_retry", None)
        st.session_state["flash"] = f"{queued} failed run(s) queued again."
        st.rerun()
    if no.button("Keep them", key="ex_bulk_no"):
        st.session_state.pop("ex_confirm_retry", None)
        st.rerun()


def bulk_cancel(filters: queries.ExecutionFilters) -> None:
    """ "Cancel the open runs of this filter": the count first, then one confirmation."""
    chosen = executions.open_of(filters)
    count = 0 if chosen is None else ui.read(queries.count_executions, chosen)
    if not count:
        return
    if st.session_state.get("ex_confirm_cancel") != filters:
        if st.button(
            f"Cancel the open runs of this filter ({count})",
            icon=":material/cancel:",
            key="ex_bulk_cancel",
        ):
            st.session_state["ex_confirm_cancel"] = filters
            st.rerun()
        return
    ending = min(count, MAX_BULK)
    more = f" (the first {MAX_BULK}; cancel again for the rest)" if count > MAX_BULK else ""
    st.warning(
        f"Cancel {ending} queued, running or waiting run(s){more}? A step at the agent is cut and "
        "its answer not recorded.",
        icon=":material/cancel:",
    )
    yes = no = st.container(horizontal=True)
    if yes.button(f"Yes, cancel {ending}", type="primary", key="ex_cancel_yes"):
        try:
            done = executions.cancel_open(filters, actor=ui.actor())
        except StepwiseError as exc:
            st.error(ui.text(exc))
            return
        st.session_state.pop("ex_confirm_cancel", None)
        st.session_state["flash"] = f"{done} run(s) cancelled."
        st.rerun()
    if no.button("Keep them running", key="ex_cancel_no"):
        st.session_state.pop("ex_confirm_cancel", None)
        st.rerun()


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
    if offset == 0 and (current := ui.read(queries.executions_in_flight, filters)):
        st.subheader("In flight")
        executions_table(current, "ex_in_flight", IN_FLIGHT_COLUMNS)
        st.subheader("Finished")
    page = ui.read(queries.list_executions, filters, limit=page_size, offset=offset, settled=True)
    if not page.rows and offset:  # the page emptied under us (retention, filters)
        st.session_state["ex_offset"] = offset = 0
        page = ui.read(queries.list_executions, filters, limit=page_size, offset=0, settled=True)
    if not page.rows:
        if filters == queries.ExecutionFilters():
            ui.empty_state(
                "No finished execution yet.",
                "Executions appear here once a schedule fires, or press Run now on Schedules "
                "(or Test run on Automations).",
            )
        else:
            ui.empty_state(
                "No finished execution matches these filters.",
                "Widen the time range or clear filters.",
            )
        return
    executions_table(page.rows, "ex_table")
    st.caption("Click a row to open the execution.")
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
    label.caption(f"Rows {offset + 1} to {offset + len(page.rows)}, newest queued first")
    nxt.button(
        "Older →",
        disabled=not page.has_more,
        key="ex_next",
        on_click=_move,
        args=(offset + page_size,),
        width="stretch",
    )


@st.fragment(run_every=10)
def execution_grid(automation_id: uuid.UUID) -> None:
    found = ui.read(queries.execution_grid, automation_id)
    if not found.executions:
        return
    st.subheader("Execution grid")
    event = st.altair_chart(
        grid.chart(found),
        width="stretch",
        height=grid.height(found),
        on_select="rerun",
        key="ex_grid",
    )
    if (chosen := grid.chosen_execution(event)) is not None:
        ui.open_execution(chosen)
    st.caption("Recent executions of this automation; click a cell to open one.")


if ui.can(Permission.RUN):
    bulk_retry(filters)
    bulk_cancel(filters)
if filters.automation_id is not None:
    execution_grid(filters.automation_id)
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
    ui.dataframe(
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
