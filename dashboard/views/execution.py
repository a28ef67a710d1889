"""One execution on its own page (`/execution?id=<execution id>`): status and timing, the
step waterfall, every attempt's request and response, and retry / cancel for editors.

While the execution is open (queued or running) the page redraws itself every couple of
seconds; once it is final it stops. Nothing on the page is keyed by its status, so an
execution that ends (or is retried) while watched is redrawn, never lost.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import streamlit as st

from core.errors import StepwiseError, ValidationFailed
from core.outcome import curl_command
from core.run_input import parse_run_input
from core.vocabulary import OPEN_STATUSES, ExecutionStatus, Permission, StepStatus
from dashboard import ui, waterfall
from db import queries
from service import executions

LIVE_EVERY_S = 2
RETRYABLE = (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED)  # what "Retry" re-opens

ui.page_link("views/executions.py", "All executions", icon=":material/arrow_back:")
if flash := st.session_state.pop("execution_flash", None):
    st.success(flash)


def not_found(why: str) -> None:
    st.title("Execution not found")
    st.warning(why, icon=":material/search_off:")
    ui.page_link("views/executions.py", "All executions", icon=":material/history:")
    st.stop()


execution_id = ui.uuid_or_none(st.query_params.get("id"))
if execution_id is None:
    not_found("Execution not found: the link has no valid execution id.")
assert execution_id is not None
first = ui.read(queries.execution_detail, execution_id)
if first is None:
    not_found("Execution not found in this workspace (or deleted by retention).")
assert first is not None
live = first.execution.status in OPEN_STATUSES


@st.fragment(run_every=LIVE_EVERY_S if live else None)
def execution_page(execution_id: uuid.UUID, watching: bool) -> None:
    detail = ui.read(queries.execution_detail, execution_id)
    if detail is None:  # deleted while watched (the automation, or retention)
        st.warning("Execution not found in this workspace (or deleted by retention).")
        return
    if watching != (detail.execution.status in OPEN_STATUSES):
        st.rerun()  # it ended (or was retried): redraw at the new refresh rate
    header(detail.execution)
    if detail.trace_id is not None:
        st.caption(f"Trace `{detail.trace_id}` (OpenTelemetry: find it in your tracing backend)")
    if ui.can(Permission.RUN):
        actions_row(detail.execution)
    show_input(detail)
    if ui.can(Permission.RUN) and detail.execution.status not in OPEN_STATUSES:
        replay_form(detail)
    steps(detail)


def header(execution: queries.ExecutionRow) -> None:
    st.markdown(f"## {ui.text(execution.automation_name)} {ui.badge_md(execution.status)}")
    st.caption(
        f"Execution `{execution.id}` · {execution.trigger} · attempt {execution.attempt}"
        + (" · refreshing while it runs" if execution.status in OPEN_STATUSES else "")
    )
    # One line of facts rather than metric tiles: four tiles stack to a screen on a phone.
    st.markdown(
        f"**Steps** {ui.text(execution.steps_done)}"
        f" · **Duration** {ui.fmt_duration(elapsed(execution))}"
        f" · **Scheduled for** {ui.fmt_time(execution.scheduled_for)}"
    )
    st.caption(
        f"Queued {ui.fmt_time(execution.queued_at)}"
        f" · started {ui.fmt_time(execution.started_at)}"
        f" · finished {ui.fmt_time(execution.finished_at)}"
    )
    if execution.error and execution.status == ExecutionStatus.CANCELLED:
        st.info(ui.text(execution.error), icon=":material/cancel:")  # a choice, not a failure
    elif execution.error:
        st.error(ui.text(execution.error), icon=":material/error:")


def elapsed(execution: queries.ExecutionRow) -> float | None:
    """Run time so far: to its end, or to now while it runs."""
    if execution.started_at is None:
        return None
    end = execution.finished_at or datetime.now(UTC)
    return (end - execution.started_at).total_seconds()


def actions_row(execution: queries.ExecutionRow) -> None:
    row = st.container(horizontal=True)
    try:
        if execution.status in RETRYABLE and row.button(
            "Retry", icon=":material/replay:", key="run_retry"
        ):
            executions.retry(execution.id, actor=ui.actor())
            st.session_state["execution_flash"] = (
                "Retry queued: it resumes at the step that failed."
            )
            st.rerun()
        if execution.status in OPEN_STATUSES and row.button(
            "Cancel", icon=":material/cancel:", key="run_cancel"
        ):
            executions.cancel(execution.id, actor=ui.actor())
            st.session_state["execution_flash"] = (
                "Cancelled: a step at the agent was cut (its answer is not recorded) "
                "and no further step runs."
            )
            st.rerun()
    except StepwiseError as exc:
        st.error(ui.text(exc))


def show_input(detail: queries.ExecutionDetail) -> None:
    if detail.input is None:
        st.caption("Started without input.")
        return
    st.markdown("**Input**, sent to the agent with every step")
    st.json(detail.input, expanded=2)


def replay_form(detail: queries.ExecutionDetail) -> None:
    """A new run of the same automation with this run's input, edited first."""
    key = f"replay_{detail.execution.id}"
    with st.expander("Replay with edited input", icon=":material/edit_note:"):
        typed = st.text_area(
            "Input (JSON object; empty for none)",
            value=json.dumps(detail.input, indent=2) if detail.input is not None else "",
            key=f"{key}_input",
            height=120,
        )
        if st.button("Replay", icon=":material/replay:", key=f"{key}_go"):
            try:
                started = executions.replay(
                    detail.execution.id, parse_run_input(typed), actor=ui.actor()
                )
            except ValidationFailed as exc:
                st.error(ui.text(f"Input: {exc.for_field('input')}"))
                return
            except StepwiseError as exc:
                st.error(ui.text(exc))
                return
            st.session_state["execution_flash"] = "Replayed: this is the new run."
            ui.open_execution(started)


def steps(detail: queries.ExecutionDetail) -> None:
    execution = detail.execution
    st.subheader("Steps")
    zero = waterfall.origin(detail.steps, execution.started_at)
    if not detail.steps or zero is None:
        st.info("No step has run yet." if execution.status in OPEN_STATUSES else "No step ran.")
        return
    live = execution.status in OPEN_STATUSES
    bars = waterfall.bars(detail.steps, zero=zero, now=datetime.now(UTC), live=live)
    st.altair_chart(waterfall.chart(bars), width="stretch", height=waterfall.height(bars))
    started = max(s.step_number for s in detail.steps)
    if execution.status in OPEN_STATUSES and started < execution.total_steps:
        waiting = (
            f"Step {execution.total_steps} has"
            if started + 1 == execution.total_steps
            else f"Steps {started + 1} to {execution.total_steps} have"
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
    if s.error and s.status == StepStatus.CANCELLED:
        st.info(ui.text(s.error), icon=":material/cancel:")
    elif s.error:
        st.error(ui.text(s.error), icon=":material/error:")
    request, response = st.columns(2)
    with request:
        st.markdown("**Request** (as stored: secrets are references)")
        st.json(s.request, expanded=1)
        st.markdown("**As `curl`** (secrets are shell variables or placeholders)")
        st.code(curl_command(s.request), language="bash", wrap_lines=True)
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


execution_page(execution_id, live)
