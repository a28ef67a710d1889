"""Overview: how the automations are doing, at a glance; every part refreshes itself."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import streamlit as st

from core.vocabulary import ExecutionStatus
from dashboard import outcomes, ui, waits
from db import figures
from tasks import queues

RANGES: dict[str, tuple[figures.Bucket, int]] = {
    "Last 24 hours (by hour)": ("hour", 1),
    "Last 14 days (by day)": ("day", 14),
}
REFRESH_S = 15  # the lists; the KPIs and the chart every 30 s
TRIAGE_WINDOW = timedelta(days=1)  # as "Failures, 24 h"

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
    # Two rows of four: eight tiles in a row cut their labels at 1440 px.
    first, second = st.columns(4), st.columns(4)
    first[0].metric("Active schedules", k.active_schedules)
    first[1].metric("Runs, last 24 h", k.runs_24h)
    first[2].metric("Success rate, 24 h", ui.fmt_rate(k.success_rate_24h))
    first[3].metric("Success rate, 7 days", ui.fmt_rate(k.success_rate_7d))
    second[0].metric("Failures, 24 h", k.failures_24h, help="failed runs: see Needs attention")
    second[1].metric(
        "Runs waiting",
        k.waiting_runs,
        help="parked on the agent's answer, a person's approval or a sleep: "
        "see Executions filtered by status waiting",
    )
    second[2].metric(
        "Approvals pending", k.approvals_pending, help="steps waiting for a person to decide"
    )
    second[3].metric("Queue depth", queue_depth(), help="messages waiting or delayed in Redis")
    if k.waiting_runs:
        ui.page_link(
            "views/executions.py",
            "The runs waiting",
            icon=":material/hourglass_top:",
            query_params={"status": ExecutionStatus.WAITING},
        )


@st.fragment(run_every=30)
def outcome_chart() -> None:
    # The period chooser sits with the chart it changes (the KPIs have fixed windows).
    title, period = st.columns([3, 2], vertical_alignment="bottom")
    title.subheader("Finished runs")
    choice = period.selectbox(
        "Period", list(RANGES), key="overview_range", label_visibility="collapsed"
    )
    bucket, days = RANGES[choice]
    now = ui.read_deployment(figures.scheduler_liveness).now
    points = ui.read(figures.outcome_series, since=now - timedelta(days=days), bucket=bucket)
    data = outcomes.frame(points)
    if data.empty or data["count"].sum() == 0:
        ui.empty_state(
            "No finished runs in this period yet.",
            "Create an automation and a schedule (or press Run now) and the chart fills in.",
        )
        return
    st.altair_chart(outcomes.chart(data, bucket), width="stretch")


@st.fragment(run_every=REFRESH_S)
def coming_up() -> None:
    st.subheader("Coming up")
    upcoming = ui.read(figures.upcoming_runs, limit=10)
    if not upcoming:
        ui.empty_state("No run is scheduled.", "Add a schedule on the Schedules page.")
        return
    viewer = ui.viewer_timezone()
    ui.dataframe(
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


def failures_link(group: figures.FailureGroup) -> str:
    """The Executions page filtered to this automation's failed runs (a shareable URL)."""
    return f"executions?status=failed&automation={group.automation_id}"


@st.fragment(run_every=REFRESH_S)
def needs_attention() -> None:
    st.subheader("Needs attention")
    now = ui.read_deployment(figures.scheduler_liveness).now
    groups = ui.read(figures.failure_groups, since=now - TRIAGE_WINDOW, limit=10)
    if not groups:
        st.success("No failed run in the last 24 hours.")
        return
    event = ui.dataframe(
        pd.DataFrame(
            {
                "Automation": [g.automation_name for g in groups],
                "Runs": [g.count for g in groups],
                "Error": [g.error for g in groups],
                "Last": [ui.fmt_ago(g.last_failed_at, now) for g in groups],
                "All failed": [failures_link(g) for g in groups],
            }
        ),
        hide_index=True,
        width="stretch",
        column_config={
            # a name of some 25 characters in full; a long error ends in "…" (the run shows it)
            "Automation": st.column_config.TextColumn(width=170),
            "Error": st.column_config.TextColumn(width=470),
            "Runs": st.column_config.NumberColumn(width=50, help="failed runs alike, last 24 h"),
            "Last": st.column_config.TextColumn(width=90),
            "All failed": st.column_config.LinkColumn(
                width=80, display_text="list", help="this automation's failed runs"
            ),
        },
        on_select="rerun",
        selection_mode="single-row",
        key="ov_failures",
    )
    if chosen := event.selection.rows:
        ui.open_execution(groups[chosen[0]].last_execution_id)
    st.caption(
        "Failed runs of the last 24 hours grouped by automation and error. Click a row to "
        "open its newest execution (and retry it there)."
    )


@st.fragment(run_every=REFRESH_S)
def approvals() -> None:
    """The approvals waiting for a person, the nearest deadline first; shown only when there
    are some (a click opens the run, where they are decided)."""
    pending = ui.read(figures.pending_approvals, limit=10)
    if not pending:
        return
    st.subheader("Waiting for approval")
    now = ui.read_deployment(figures.scheduler_liveness).now
    event = ui.dataframe(
        pd.DataFrame(
            {
                "Automation": [p.automation_name for p in pending],
                "Step": [p.step_key for p in pending],
                "Who decides": [waits.deciders(p.role) for p in pending],
                "Waiting": [ui.fmt_ago(p.since, now).removesuffix(" ago") for p in pending],
                "Deadline": [ui.fmt_ago(p.until, now) if p.until else "—" for p in pending],
            }
        ),
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode="single-row",
        key="ov_approvals",
    )
    if chosen := event.selection.rows:
        ui.open_execution(pending[chosen[0]].execution_id)
    st.caption("Click a row to open its run and approve or reject the step there.")


headline()
approvals()
outcome_chart()
# One above the other: side by side, the errors were cut to a few words at 1440 px.
needs_attention()
coming_up()
