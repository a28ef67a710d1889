"""One execution on its own page (`/execution?id=<execution id>`): status and timing, the
step waterfall, every attempt's request and response, and retry / cancel for editors.

A graph run (its automation's steps have keys) also has its graph drawn, each step filled
by its state (`core.graph.shown_states`), a waterfall with a lane per call (steps that ran
at the same time side by side), and a section per step: its reason when skipped, cancelled
or failed, its tries, and a fan-out's items one by one (a selectbox).

A step that waits (an async call, an approval, a sleep) says what it waits for and until when
(`dashboard.waits`); an approval shows its message and, to a member whose role allows,
Approve / Reject.

While the execution is open (queued, running or waiting) the page redraws itself every couple
of seconds; once it is final it stops. Nothing on the page is keyed by its status, so an
execution that ends (or is retried) while watched is redrawn, never lost.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import UTC, datetime

import streamlit as st

from core.errors import StepwiseError, ValidationFailed
from core.graph import Graph, GraphStep, ShownStep, shown_states
from core.outcome import curl_command
from core.run_input import parse_run_input
from core.vocabulary import OPEN_STATUSES, ExecutionStatus, Permission, StepState, StepStatus
from dashboard import graph_view, ui, waits, waterfall
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
    header(detail.execution, graph_progress(detail))
    if detail.trace_id is not None:
        st.caption(f"Trace `{detail.trace_id}` (OpenTelemetry: find it in your tracing backend)")
    if ui.can(Permission.RUN):
        actions_row(detail.execution)
    show_input(detail)
    if ui.can(Permission.RUN) and detail.execution.status not in OPEN_STATUSES:
        replay_form(detail)
    steps(detail)


def graph_progress(detail: queries.ExecutionDetail) -> str | None:
    """A graph run's steps counted by state ("2 succeeded · 1 running, of 5"); None for a
    chain (its steps are counted by number)."""
    if detail.graph is None:
        return None
    ended = detail.execution.status not in OPEN_STATUSES
    shown = shown_states(detail.graph, detail.steps, ended=ended).values()
    counts = Counter(step.state for step in shown)
    said = " · ".join(f"{counts[state]} {state}" for state in StepState if counts[state])
    return f"{said}, of {len(detail.graph.steps)}"


def header(execution: queries.ExecutionRow, progress: str | None = None) -> None:
    st.markdown(f"## {ui.text(execution.automation_name)} {ui.badge_md(execution.status)}")
    refreshing = "waits" if execution.status == ExecutionStatus.WAITING else "runs"
    st.caption(
        f"Execution `{execution.id}` · {execution.trigger} · attempt {execution.attempt}"
        + (f" · refreshing while it {refreshing}" if execution.status in OPEN_STATUSES else "")
    )
    # One line of facts rather than metric tiles: four tiles stack to a screen on a phone.
    st.markdown(
        f"**Steps** {ui.text(progress or execution.steps_done)}"
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
    if detail.graph is not None:
        graph_steps(detail, detail.graph)
        return
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


def graph_steps(detail: queries.ExecutionDetail, graph: Graph) -> None:
    """A graph run: the graph by state, the waterfall of its calls, then each step."""
    execution = detail.execution
    shown = shown_states(graph, detail.steps, ended=execution.status not in OPEN_STATUSES)
    st.subheader("Graph")
    graph_view.show(graph, {key: step.state for key, step in shown.items()})
    st.subheader("Steps")
    zero = waterfall.origin(detail.steps, execution.started_at)
    bars = (
        []
        if zero is None
        else waterfall.lanes(
            detail.steps,
            zero=zero,
            now=datetime.now(UTC),
            live=execution.status in OPEN_STATUSES,
        )
    )
    if bars:
        st.altair_chart(waterfall.chart(bars), width="stretch", height=waterfall.height(bars))
    else:
        st.info("No step has run yet." if execution.status in OPEN_STATUSES else "No step ran.")
    runs: dict[str, list[queries.StepRunRow]] = {}
    for s in detail.steps:
        runs.setdefault(s.step_key, []).append(s)
    for step in graph.steps:
        state = shown[step.key]
        mine = runs.pop(step.key, [])
        # A waiting step is open: what it waits for (an approval's buttons) shows at once.
        with st.expander(
            f"{step.key} · {state.state}",
            icon=_ICON.get(state.state),
            expanded=state.state is StepState.WAITING,
        ):
            graph_step(step, state, mine, zero, execution.id)
    for key, mine in runs.items():  # steps since removed from the automation
        with st.expander(f"{key} · no longer in the automation"):
            graph_step(None, None, mine, zero, execution.id)


_ICON = {
    StepState.WAITING: ":material/hourglass_top:",
    StepState.SKIPPED: ":material/redo:",
    StepState.CANCELLED: ":material/cancel:",
    StepState.FAILED: ":material/error:",
}


def graph_step(
    step: GraphStep | None,
    state: ShownStep | None,
    mine: list[queries.StepRunRow],
    zero: datetime | None,
    execution_id: uuid.UUID,
) -> None:
    """One step of a graph run: why it was skipped, cancelled or failed, then its tries (a
    fan-out: its list and one item at a time)."""
    if step is not None and step.name:
        st.caption(ui.text(step.name))
    if state is not None and state.reason:
        if state.state is StepState.FAILED:
            st.error(ui.text(state.reason), icon=":material/error:")
        else:
            st.info(
                ui.text(f"{state.state.capitalize()}: {state.reason}"), icon=_ICON.get(state.state)
            )
    own = [s for s in mine if s.item is None and waterfall.ran(s)]
    items = [s for s in mine if s.item is not None]
    # Its latest own row says how it waits, or how its wait ended (a rejection that skipped
    # it too: a skip that `waterfall.ran` leaves out).
    latest = next((s for s in reversed(mine) if s.item is None), None)
    if latest is not None and latest.wait is not None:
        waits.show(latest, execution_id, datetime.now(UTC))
    if zero is None or not (own or items):
        if state is not None and state.state is StepState.PENDING:
            st.caption("Not started yet: waiting for the steps it needs.")
        return
    if (step is not None and step.for_each is not None) or items:
        fan_out(own, items, zero, key=f"items_{execution_id}_{mine[0].step_key}")
        return
    for number, s in enumerate(own, start=1):
        st.markdown(f"**Try {number}** · {s.status}")
        attempt(s, zero, s.step_key)


def fan_out(
    own: list[queries.StepRunRow], items: list[queries.StepRunRow], zero: datetime, *, key: str
) -> None:
    """A fan-out's list and its items, one at a time: a selectbox of every item (its status,
    tries and duration), then the chosen item's value and each of its tries."""
    listed = own[-1].request.get("items") if own else None
    tries: dict[int, list[queries.StepRunRow]] = {}
    for s in sorted(items, key=lambda s: (s.started_at, s.attempt)):
        tries.setdefault(s.item or 0, []).append(s)
    count = len(listed) if isinstance(listed, list) else max(tries, default=-1) + 1
    st.caption(f"For each: {count} item{'s' if count != 1 else ''}")
    if not count:
        return

    def said(index: int) -> str:
        mine = tries.get(index)
        if not mine:
            return f"#{index} · not started"
        last = mine[-1]
        took = None if last.duration_ms is None else last.duration_ms / 1000
        return (
            f"#{index} · {last.status} · {len(mine)} tr{'ies' if len(mine) > 1 else 'y'}"
            f" · {ui.fmt_duration(took)}"
        )

    index = st.selectbox("Item", range(count), format_func=said, key=key)
    if isinstance(listed, list) and index < len(listed):
        st.markdown(f"**Item #{index}**, as its `for_each` listed it")
        st.code(json.dumps(listed[index], indent=2)[:20_000], language="json", wrap_lines=True)
    for number, s in enumerate(tries.get(index, []), start=1):
        st.markdown(f"**Try {number}** · {s.status}")
        attempt(s, zero, waterfall.call_label(s))


def attempt(s: queries.StepRunRow, zero: datetime, call: str | None = None) -> None:
    """One try of a step: when, how long, its request and response; named by its step's
    name (a chain) or by `call` (a graph's: its key, `#index` for a fan-out's item). A step
    that calls no agent (an approval, a sleep) has no request: its output only."""
    took = None if s.duration_ms is None else s.duration_ms / 1000
    named = ui.text(call if call is not None else s.step_name) or "Step"
    calls = waits.kind_of(s) not in waits.NO_CALL
    st.caption(
        f"{named} · started {ui.fmt_time(s.started_at)} "
        f"(+{(s.started_at - zero).total_seconds():.2f} s) · took {ui.fmt_duration(took)}"
        + (f" · HTTP {s.response_status or '—'}" if calls else "")
    )
    if s.error and s.status == StepStatus.CANCELLED:
        st.info(ui.text(s.error), icon=":material/cancel:")
    elif s.error:
        st.error(ui.text(s.error), icon=":material/error:")
    if not calls:
        if s.response_body:
            st.markdown("**Output**")
            st.code(pretty(s.response_body), language="json", wrap_lines=True)
        return
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
