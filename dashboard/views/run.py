"""One run on its own page (`/run?id=<run id>`): status and timing, the step waterfall,
every attempt's request and response, and retry / cancel for editors.

While the run is open (queued or running) the page redraws itself every couple of
seconds; once it is final it stops. Nothing on the page is keyed by the run's status,
so a run that ends (or is retried) while watched is redrawn, never lost.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import streamlit as st

from core.errors import StepwiseError
from core.vocabulary import OPEN_STATUSES, ExecutionStatus, Permission
from dashboard import ui, waterfall
from db import queries
from service import executions

LIVE_EVERY_S = 2
RETRYABLE = (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED)  # what "Retry" re-opens

ui.page_link("views/executions.py", "All runs", icon=":material/arrow_back:")
if flash := st.session_state.pop("run_flash", None):
    st.success(flash)


def not_found(why: str) -> None:
    st.title("Run not found")
    st.warning(why, icon=":material/search_off:")
    ui.page_link("views/executions.py", "All runs", icon=":material/history:")
    st.stop()


run_id = ui.uuid_or_none(st.query_params.get("id"))
if run_id is None:
    not_found("Run not found: the link has no valid run id.")
assert run_id is not None
first = ui.read(queries.execution_detail, run_id)
if first is None:
    not_found("Run not found in this workspace (or deleted by retention).")
assert first is not None
live = first.execution.status in OPEN_STATUSES


@st.fragment(run_every=LIVE_EVERY_S if live else None)
def run_page(execution_id: uuid.UUID, watching: bool) -> None:
    detail = ui.read(queries.execution_detail, execution_id)
    if detail is None:  # deleted while watched (the automation, or retention)
        st.warning("Run not found in this workspace (or deleted by retention).")
        return
    if watching != (detail.execution.status in OPEN_STATUSES):
        st.rerun()  # it ended (or was retried): redraw at the new refresh rate
    header(detail.execution)
    if ui.can(Permission.RUN):
        actions_row(detail.execution)
    run_input(detail)
    steps(detail)


def header(run: queries.ExecutionRow) -> None:
    st.markdown(f"## {ui.text(run.automation_name)} {ui.badge_md(run.status)}")
    st.caption(
        f"Run `{run.id}` · {run.trigger} · attempt {run.attempt}"
        + (" · refreshing while it runs" if run.status in OPEN_STATUSES else "")
    )
    # One line of facts rather than metric tiles: four tiles stack to a screen on a phone.
    st.markdown(
        f"**Steps** {ui.text(run.steps_done)} · **Duration** {ui.fmt_duration(elapsed(run))}"
        f" · **Scheduled for** {ui.fmt_time(run.scheduled_for)}"
    )
    st.caption(
        f"Queued {ui.fmt_time(run.queued_at)} · started {ui.fmt_time(run.started_at)} · "
        f"finished {ui.fmt_time(run.finished_at)}"
    )
    if run.error:
        st.error(ui.text(run.error), icon=":material/error:")


def elapsed(run: queries.ExecutionRow) -> float | None:
    """Run time so far: to its end, or to now while it runs."""
    if run.started_at is None:
        return None
    end = run.finished_at or datetime.now(UTC)
    return (end - run.started_at).total_seconds()


def actions_row(run: queries.ExecutionRow) -> None:
    row = st.container(horizontal=True)
    try:
        if run.status in RETRYABLE and row.button(
            "Retry", icon=":material/replay:", key="run_retry"
        ):
            executions.retry(run.id, actor=ui.actor())
            st.session_state["run_flash"] = "Retry queued: it resumes at the step that failed."
            st.rerun()
        if run.status in OPEN_STATUSES and row.button(
            "Cancel", icon=":material/cancel:", key="run_cancel"
        ):
            executions.cancel(run.id, actor=ui.actor())
            st.session_state["run_flash"] = "Cancelled (a running step finishes first)."
            st.rerun()
    except StepwiseError as exc:
        st.error(ui.text(exc))


def run_input(detail: queries.ExecutionDetail) -> None:
    if detail.input is None:
        st.caption("Started without input.")
        return
    st.markdown("**Input**, sent to the agent with every step")
    st.json(detail.input, expanded=2)


def steps(detail: queries.ExecutionDetail) -> None:
    run = detail.execution
    st.subheader("Steps")
    zero = waterfall.origin(detail.steps, run.started_at)
    if not detail.steps or zero is None:
        st.info("No step has run yet." if run.status in OPEN_STATUSES else "No step ran.")
        return
    live = run.status in OPEN_STATUSES
    bars = waterfall.bars(detail.steps, zero=zero, now=datetime.now(UTC), live=live)
    st.altair_chart(waterfall.chart(bars), width="stretch", height=waterfall.height(bars))
    started = max(s.step_number for s in detail.steps)
    if run.status in OPEN_STATUSES and started < run.total_steps:
        waiting = (
            f"Step {run.total_steps} has"
            if started + 1 == run.total_steps
            else f"Steps {started + 1} to {run.total_steps} have"
        )
        st.caption(f"{waiting} not started yet.")
    for s in detail.steps:
        with st.expander(f"Step {s.step_number} · attempt {s.attempt} · {s.status}"):
            attempt(s, zero)


def attempt(s: queries.StepRunRow, zero: datetime) -> None:
    took = None if s.duration_ms is None else s.duration_ms / 1000
    st.caption(
        f"{ui.text(s.step_name) or 'Step'} · started {ui.fmt_time(s.started_at)} "
        f"(+{(s.started_at - zero).total_seconds():.2f} s) · took {ui.fmt_duration(took)} · "
        f"HTTP {s.response_status or '—'}"
    )
    if s.error:
        st.error(ui.text(s.error), icon=":material/error:")
    request, response = st.columns(2)
    with request:
        st.markdown("**Request** (as stored: secrets are references)")
        st.json(s.request, expanded=1)
    with response:
        st.markdown("**Response**")
        st.code(pretty(s.response_body), language="json", wrap_lines=True)


def pretty(body: str | None) -> str:
    if not body:
        return "(empty)"
    try:
        return json.dumps(json.loads(body), indent=2)[:20_000]
    except ValueError:
        return body[:20_000]


run_page(run_id, live)
