"""Executions: the run history, filtered and paged in SQL, with each run's step timeline."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import altair as alt
import pandas as pd
import streamlit as st

from core.errors import StepwiseError
from core.vocabulary import OPEN_STATUSES, ExecutionStatus, Permission
from dashboard import ui
from dashboard.filters import history_filters
from db import figures, queries
from tasks import actions

PAGE_SIZES = (25, 50, 100)
RETRYABLE = (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED)  # what "Retry" re-opens

st.title("Executions")
ui.scheduler_warning()
if flash := st.session_state.pop("flash", None):
    st.success(flash)

filters = history_filters("ex")
size_col, _ = st.columns([1, 5])
page_size = size_col.selectbox("Rows per page", PAGE_SIZES, key="ex_page_size")
# A different filter starts again at the first page.
if st.session_state.get("ex_filters") != (filters, page_size):
    st.session_state["ex_filters"] = (filters, page_size)
    st.session_state["ex_offset"] = 0
if (wanted := st.query_params.get("execution")) and "ex_open" not in st.session_state:
    if ui.uuid_or_none(wanted) is None:
        st.warning("Execution not found: the link has no valid execution id.")
    else:
        st.session_state["ex_open"] = wanted


def history_table(rows: list[queries.ExecutionRow]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Status": [ui.badge(r.status) for r in rows],
            "Automation": [r.automation_name for r in rows],
            "Trigger": [r.trigger for r in rows],
            "Scheduled for": [ui.fmt_time(r.scheduled_for) for r in rows],
            "Queued": [ui.fmt_time(r.queued_at) for r in rows],
            "Duration": [ui.fmt_duration(r.duration_s) for r in rows],
            "Steps": [r.steps_done for r in rows],
            "Attempt": [r.attempt for r in rows],
            "Error": [r.error or "" for r in rows],
            "Id": [str(r.id) for r in rows],
        }
    )


def _move(offset: int) -> None:
    st.session_state["ex_offset"] = offset


@st.fragment(run_every=10)
def history() -> None:
    offset = st.session_state.get("ex_offset", 0)
    page = ui.read(queries.list_executions, filters, limit=page_size, offset=offset)
    if not page.rows and offset:  # the page emptied under us (retention, filters)
        st.session_state["ex_offset"] = offset = 0
        page = ui.read(queries.list_executions, filters, limit=page_size, offset=0)
    if not page.rows:
        if filters == queries.ExecutionFilters():
            ui.empty_state(
                "No run yet.",
                "Runs appear here once a schedule fires, or press Run now on Schedules "
                "(or Test run on Automations).",
            )
        else:
            ui.empty_state(
                "No run matches these filters.", "Widen the time range or clear filters."
            )
        return
    st.dataframe(history_table(page.rows), hide_index=True, width="stretch")
    prev, label, nxt = st.columns([1, 4, 1])
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
    ids = [str(r.id) for r in page.rows]
    current = st.session_state.get("ex_open")
    options = ["", *ids] if current in ("", None, *ids) else ["", current, *ids]
    by_id = {str(r.id): r for r in page.rows}
    st.selectbox(
        "Open an execution",
        options,
        # Only what never changes about a run: a label that moved with its status lost
        # the selection when the run ended (and showed the old status meanwhile).
        format_func=lambda i: (
            "Choose a run to see its steps…"
            if not i
            else f"{by_id[i].automation_name} · {ui.fmt_time(by_id[i].queued_at)} · {i[:8]}"
            if i in by_id
            else i
        ),
        key="ex_open",
    )
    if (opened := ui.uuid_or_none(st.session_state.get("ex_open"))) is not None:
        detail_view(opened)


def detail_view(execution_id: uuid.UUID) -> None:
    detail = ui.read(queries.execution_detail, execution_id)
    if detail is None:
        st.warning("Execution not found in this workspace (or deleted by retention).")
        return
    run = detail.execution
    with st.container(border=True):
        st.markdown(f"### {ui.text(run.automation_name)} {ui.badge_md(run.status)}")
        m = st.columns(5)
        m[0].metric("Trigger", run.trigger)
        m[1].metric("Steps done", run.steps_done)
        m[2].metric("Attempt", run.attempt)
        m[3].metric("Duration", ui.fmt_duration(run.duration_s))
        m[4].metric("Scheduled for", ui.fmt_time(run.scheduled_for)[11:19])
        st.caption(
            f"Id `{run.id}` · queued {ui.fmt_time(run.queued_at)} · started "
            f"{ui.fmt_time(run.started_at)} · finished {ui.fmt_time(run.finished_at)}"
        )
        if run.error:
            st.error(ui.text(run.error))
        if ui.can(Permission.RUN):
            actions_row(run)
        if not detail.steps:
            st.info("No step has run yet.")
            return
        st.dataframe(
            pd.DataFrame(
                {
                    **ui.step_columns(detail.steps),
                    "Started": [ui.fmt_time(s.started_at) for s in detail.steps],
                    "Error": [s.error or "" for s in detail.steps],
                }
            ),
            hide_index=True,
            width="stretch",
        )
        for s in detail.steps:
            with st.expander(f"Step {s.step_number} · attempt {s.attempt} · {s.status}"):
                st.markdown("**Request**")
                st.json(s.request, expanded=False)
                st.markdown("**Response**")
                st.code(_pretty(s.response_body), language="json")
                if s.error:
                    st.error(ui.text(s.error))


def _pretty(body: str | None) -> str:
    if not body:
        return "(empty)"
    try:
        return json.dumps(json.loads(body), indent=2)[:20_000]
    except ValueError:
        return body[:20_000]


def actions_row(run: queries.ExecutionRow) -> None:
    a, b, _ = st.columns([1, 1, 4])
    try:
        if run.status in RETRYABLE and a.button(
            "Retry", icon=":material/replay:", key=f"ex_retry_{run.id}", width="stretch"
        ):
            actions.retry(run.id, actor=ui.actor())
            st.session_state["flash"] = "Retry queued: it resumes at the step that failed."
            st.rerun()
        if run.status in OPEN_STATUSES and b.button(
            "Cancel", icon=":material/cancel:", key=f"ex_cancel_{run.id}", width="stretch"
        ):
            actions.cancel(run.id, actor=ui.actor())
            st.session_state["flash"] = "Cancelled (a running step finishes first)."
            st.rerun()
    except StepwiseError as exc:
        st.error(ui.text(exc))


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
            "Success rate": [s.success_rate for s in stats],
            "p50 (s)": [s.p50_s for s in stats],
            "p95 (s)": [s.p95_s for s in stats],
        }
    )
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        column_config={
            "Success rate": st.column_config.ProgressColumn(
                "Success rate", min_value=0.0, max_value=1.0, format="percent"
            ),
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
