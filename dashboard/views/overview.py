"""Overview: how the automations are doing, at a glance."""

from __future__ import annotations

from datetime import timedelta

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import ui
from db import figures, queries
from tasks import queues

RANGES = {"Last 24 hours (by hour)": ("hour", 1), "Last 14 days (by day)": ("day", 14)}

st.title("Overview")
ui.scheduler_warning()


def queue_depth() -> str:
    try:
        return str(sum(q.queued + q.delayed for q in queues.all_queue_stats()))
    except Exception:  # Redis down: say so, do not break the page
        return "Redis unreachable"


@st.fragment(run_every=30)
def headline() -> None:
    k = ui.read(figures.kpis)
    cols = st.columns(6)
    cols[0].metric("Active schedules", k.active_schedules)
    cols[1].metric("Runs, last 24 h", k.runs_24h)
    cols[2].metric("Success rate, 24 h", ui.fmt_rate(k.success_rate_24h))
    cols[3].metric("Success rate, 7 days", ui.fmt_rate(k.success_rate_7d))
    cols[4].metric("Failures, 24 h", k.failures_24h, help="failed runs: see Executions → failed")
    cols[5].metric("Queue depth", queue_depth(), help="messages waiting or delayed in Redis")
    choice = st.session_state.get("overview_range", next(iter(RANGES)))
    bucket, days = RANGES[choice]
    points = ui.read(figures.outcome_series, since=k.now - timedelta(days=days), bucket=bucket)
    frame = pd.DataFrame([p.__dict__ for p in points])
    if frame.empty or frame["count"].sum() == 0:
        ui.empty_state(
            "No finished runs in this period yet.",
            "Create an automation and a schedule (or press Run now) and the chart fills in.",
        )
        return
    chart = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("bucket:T", title=None),
            y=alt.Y("count:Q", title="runs", stack=True),
            color=alt.Color(
                "status:N",
                scale=alt.Scale(
                    domain=list(ui.STATUS_COLORS), range=list(ui.STATUS_COLORS.values())
                ),
            ),
            tooltip=["bucket:T", "status:N", "count:Q"],
        )
        .properties(height=280)
    )
    st.altair_chart(chart, width="stretch")


st.selectbox("Chart", list(RANGES), key="overview_range", label_visibility="collapsed")
headline()

left, right = st.columns(2)
with left:
    st.subheader("Coming up")
    upcoming = ui.read(figures.upcoming_runs, limit=10)
    if not upcoming:
        ui.empty_state("No run is scheduled.", "Add a schedule on the Schedules page.")
    else:
        viewer = ui.viewer_timezone()
        st.dataframe(
            pd.DataFrame(
                {
                    "Automation": [u.automation_name for u in upcoming],
                    "Next run": [ui.fmt_time(u.next_run_at, u.timezone) for u in upcoming],
                    f"Your time ({viewer})": [ui.fmt_time(u.next_run_at, viewer) for u in upcoming],
                }
            ),
            hide_index=True,
            width="stretch",
        )
with right:
    st.subheader("Needs attention")
    failures = ui.read(queries.recent_failures, limit=10)
    if not failures:
        st.success("No failed runs.")
    else:
        event = st.dataframe(
            pd.DataFrame(
                {
                    "Automation": [f.automation_name for f in failures],
                    "Queued": [ui.fmt_time(f.queued_at) for f in failures],
                    "Error": [f.error or "" for f in failures],
                }
            ),
            hide_index=True,
            width="stretch",
            on_select="rerun",
            selection_mode="single-row",
            key="ov_failures",
        )
        if chosen := event.selection.rows:
            ui.open_run(failures[chosen[0]].id)
        st.caption("Click a row to open the run (and retry it there).")
