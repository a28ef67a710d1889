"""Automations: what runs (the steps sent to the agent), with a test run and deletion."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pandas as pd
import streamlit as st

from core.automation import AutomationInput, Steps, redact_url, steps_data, validate_automation
from core.automation import is_graph as is_graph_steps
from core.errors import StepwiseError, ValidationFailed
from core.graph import Graph, graph_of, parse_graph
from core.limits import (
    MAX_CONCURRENCY,
    MAX_NAME,
    MAX_RATE_PER_S,
    MAX_RETRIES,
    MAX_STEP_TIMEOUT_S,
    MIN_RATE_PER_S,
    MIN_STEP_TIMEOUT_S,
)
from core.run_input import parse_run_input
from core.settings import get_settings
from core.vocabulary import OPEN_STATUSES, ExecutionStatus, Permission
from dashboard import forms, graph_view, notifications, ui
from dashboard.webhook import webhook_section
from db import queries
from db.queries import ExecutionFilters
from service import automations as automation_service
from service import executions

NEW = "new"
SECRET_ONCE = "auto_secret_once"  # a signing secret to show on the next run of the page, once
TEST_RUN_WAIT_S = 15
# A test run is watched while in these; a run that waits (an approval, say) may wait for days.
TEST_RUN_BUSY = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)

st.title("Automations")
if flash := st.session_state.pop("flash", None):
    st.success(flash)
if secret := st.session_state.pop(SECRET_ONCE, None):
    st.info(
        "**Signing secret**, shown this once. Every call to the agent carries a "
        "`Stepwise-Signature` made with it. Store it where your agent reads its settings "
        "(an environment variable or its secret store) and have the agent check each call "
        "with it: docs/SECURITY.md has the few lines that do. The bundled demo agent needs "
        "nothing: it reads each automation's secret from Stepwise itself.",
        icon=":material/key:",
    )
    st.code(secret, language=None)

automations = ui.read(queries.list_automations)
by_id = {str(a.id): a for a in automations}

if automations:
    ui.dataframe(
        pd.DataFrame(
            {
                "Name": [a.name for a in automations],
                "Steps": [len(a.steps) for a in automations],
                "Agent URL": [redact_url(a.agent_url) for a in automations],
                "Schedules": [a.schedules for a in automations],
                "Timeout (s)": [a.step_timeout_s for a in automations],
                "Retries": [a.max_retries for a in automations],
                "Updated": [ui.fmt_time(a.updated_at) for a in automations],
            }
        ),
        hide_index=True,
        width="stretch",
    )
else:
    ui.empty_state(
        "No automation yet.",
        "Fill in the form below: a name, your agent's URL and the steps to send it.",
    )

if not ui.can(Permission.EDIT):
    st.caption(
        "You can read this workspace's automations; an admin can make you an editor to "
        "create, change, test or delete them."
    )
    st.stop()
if (pending := st.session_state.pop("auto_pending_select", None)) in (NEW, *by_id):
    st.session_state["auto_selected"] = pending
choice = st.selectbox(
    "Automation",
    [NEW, *by_id],
    format_func=lambda i: "+ New automation" if i == NEW else by_id[i].name,
    key="auto_selected",
)
current = by_id.get(choice)
k = f"auto_{choice}_"  # widget keys per automation, so switching never mixes forms


def defaults(row: queries.AutomationRow | None) -> dict[str, Any]:
    if row is None:
        return {
            "name": "",
            "description": "",
            "agent_url": "",
            "project_context": "",
            "steps": [{"name": "Step 1", "message": ""}],
            "timeout": 30,
            "retries": 3,
            "concurrency": None,
            "rate": None,
            "urgent": False,
            "headers": {},
        }
    return {
        "name": row.name,
        "description": row.description,
        "agent_url": row.agent_url,
        "project_context": row.project_context,
        "steps": row.steps,
        "timeout": row.step_timeout_s,
        "retries": row.max_retries,
        "concurrency": row.concurrency_limit,
        "rate": row.rate_limit_per_s,
        "urgent": row.urgent,
        "headers": row.request_headers,
    }


base = defaults(current)
is_graph = any("key" in step for step in base["steps"])
# Errors as of the last Save; once a Save has failed, the form is checked again on every
# change (as the schedule dialog checks as you type): a message goes as soon as its
# field is fixed. `live_errors` below replaces this once the inputs are drawn.
errors: dict[str, str] = st.session_state.get(k + "errors", {})
STEP_ROWS = k + "steps_rows"  # the step table's rows as last edited (read by Save)


def form_input() -> AutomationInput:
    s = st.session_state
    steps: Steps
    if s.get(k + "steps_as_yaml", is_graph):
        steps = forms.parse_steps_yaml(s.get(k + "steps_yaml", forms.steps_yaml(base["steps"])))
    elif s.get(k + "steps_as_text"):
        steps = forms.parse_steps_text(s[k + "steps_text"])
    else:
        steps = forms.steps_from_rows(s.get(STEP_ROWS, []))
    return forms.automation_input(
        forms.AutomationForm(
            name=s[k + "name"],
            agent_url=s[k + "agent_url"],
            steps=steps,
            description=s[k + "description"],
            project_context=s[k + "project_context"],
            timeout=s[k + "timeout"],
            retries=s[k + "retries"],
            concurrency=s[k + "concurrency"],
            rate=s[k + "rate"],
            headers_text=s[k + "headers"],
            urgent=bool(s.get(k + "urgent", False)),
        )
    )


def live_errors() -> dict[str, str]:
    """Every field's problem with the form as it stands now (no database involved)."""
    try:
        validate_automation(form_input(), egress=get_settings().egress_policy())
    except ValidationFailed as exc:
        return forms.errors_by_field(exc)
    return {}


if k + "errors" in st.session_state and k + "name" in st.session_state:
    errors = st.session_state[k + "errors"] = live_errors()

st.subheader("New automation" if current is None else f"Edit “{ui.text(current.name)}”")
left, right = st.columns(2)
with left:
    st.text_input("Name", value=base["name"], key=k + "name", max_chars=MAX_NAME)
    ui.field_error(errors, "name")
    st.text_input(
        "Agent URL", value=base["agent_url"], key=k + "agent_url", placeholder="https://…/agent"
    )
    ui.field_error(errors, "agent_url")
    st.text_area("Description", value=base["description"], key=k + "description", height=80)
with right:
    st.text_area(
        "Project context",
        value=base["project_context"],
        key=k + "project_context",
        height=80,
        help="Sent to the agent with every step.",
    )
    ui.field_error(errors, "project_context")
    a, b = st.columns(2)
    a.number_input(
        "Step timeout (s)",
        MIN_STEP_TIMEOUT_S,
        MAX_STEP_TIMEOUT_S,
        value=int(base["timeout"]),
        key=k + "timeout",
    )
    b.number_input("Retries", 0, MAX_RETRIES, value=int(base["retries"]), key=k + "retries")
    with a:
        ui.field_error(errors, "step_timeout_s")
    with b:
        ui.field_error(errors, "max_retries")
    c, d = st.columns(2)
    c.number_input(
        "At most at once",
        min_value=1,
        max_value=MAX_CONCURRENCY,
        value=base["concurrency"],
        key=k + "concurrency",
        placeholder="no limit",
        help="Agent calls of this automation in flight at the same time, all workers together.",
    )
    d.number_input(
        "At most per second",
        min_value=MIN_RATE_PER_S,
        max_value=float(MAX_RATE_PER_S),
        value=base["rate"],
        key=k + "rate",
        placeholder="no limit",
        format="%g",
        help="Agent calls of this automation started per second (0.5: one every 2 s).",
    )
    with c:
        ui.field_error(errors, "concurrency_limit")
    with d:
        ui.field_error(errors, "rate_limit_per_s")
    st.checkbox(
        "Urgent",
        value=bool(base["urgent"]),
        key=k + "urgent",
        help="Its runs go to their own queue, ahead of any backlog of other runs.",
    )

st.text_area(
    "Request headers",
    value=forms.headers_text(base["headers"]),
    key=k + "headers",
    height=68,
    placeholder="Authorization: Bearer {{ secret.AGENT_TOKEN }}",
    help=(
        "One per line, `Name: value`, sent with every call. Credentials go in workspace "
        "secrets and are written here as `{{ secret.NAME }}`: the worker fills them in at "
        "call time, and their values are never stored with a run or shown."
    ),
)
ui.field_error(errors, "request_headers")

if current is not None:
    st.markdown("**Graph**" if is_graph else "**Steps**, in order")
    graph_view.show(graph_of(current.steps))

st.markdown("**Steps**" if is_graph else "**Steps**, sent to the agent in order")
as_yaml = st.toggle(
    "Edit steps as YAML (a graph: key, needs, optional_needs, when, for_each, input, "
    "agent_url, timeout_s, max_retries, request_headers)",
    value=is_graph,
    key=k + "steps_as_yaml",
    help=(
        "Steps with a `key` make a graph: each runs once the steps it `needs` have, and its "
        "message is a template over `{{ input }}` and `{{ steps.KEY.output }}` of its needs. "
        "Without keys, the steps run in order and messages are sent as written."
    ),
)
as_text = not as_yaml and st.toggle(
    "Edit steps as text (one step per line: `name | message`)", key=k + "steps_as_text"
)


def preview_graph(text: str) -> Graph | None:
    """The graph the YAML editor holds when it differs from the saved steps and every check
    passes (None otherwise: its problems show under it once Save is pressed)."""
    if text == forms.steps_yaml(base["steps"]):
        return None
    try:
        steps = forms.parse_steps_yaml(text)
        if not is_graph_steps(steps):
            return None
        return parse_graph(steps_data(steps), egress=get_settings().egress_policy())
    except ValidationFailed:
        return None


@st.fragment
def steps_table() -> None:
    """The step grid on its own: a cell edit reruns this table, not the whole page."""
    st.caption("Add rows at the bottom, delete with the row checkbox; change **order** to reorder.")
    edited = st.data_editor(
        pd.DataFrame(
            [
                {"order": n, "name": s.get("name", ""), "message": s.get("message", "")}
                for n, s in enumerate(base["steps"], start=1)
            ]
        ),
        num_rows="dynamic",
        hide_index=True,
        width="stretch",
        key=k + "steps_table",
        column_config={
            # A new row starts blank, not with "None" in every cell.
            "order": st.column_config.NumberColumn("order", width=60, step=1),
            "name": st.column_config.TextColumn("name", width=140, default=""),
            "message": st.column_config.TextColumn("message", width="large", default=""),
        },
    )
    st.session_state[STEP_ROWS] = edited.to_dict("records")
    if k + "errors" in st.session_state:  # checked as you edit, once a Save has failed
        ui.field_error(live_errors(), "steps")


if is_graph and not as_yaml:
    st.warning(
        "This automation is a graph: the table and the text lines have no keys, needs or "
        "conditions, and saving from them makes it a line of steps run in order."
    )
if as_yaml:
    st.text_area(
        "Steps (YAML)",
        value=forms.steps_yaml(base["steps"]),
        key=k + "steps_yaml",
        height=320,
        placeholder="- key: plan\n  message: List sources on {{ input.topic }}\n"
        "- key: read\n  needs: [plan]\n  for_each: steps.plan.output.sources\n"
        "  message: Summarise {{ item }}",
    )
    ui.field_error(errors, "steps")
    if (edited := preview_graph(st.session_state.get(k + "steps_yaml", ""))) is not None:
        with st.expander("Preview of the edited graph (not saved yet)", expanded=True):
            graph_view.show(edited)
elif as_text:
    st.text_area("Steps", value=forms.steps_text(base["steps"]), key=k + "steps_text", height=160)
    ui.field_error(errors, "steps")
else:
    steps_table()


if current is not None:
    st.text_area(
        "Test run input (JSON object, optional)",
        key=k + "run_input",
        height=68,
        placeholder='{"customer": "ACME"}',
        help="Sent to the agent with every step of the test run, as `input`.",
    )
cols = st.columns(4)
# A test run's outcome shows here, under its button (not below the sections that follow).
test_run_area = st.container()
if cols[0].button("Save", icon=":material/save:", type="primary", key=k + "save", width="stretch"):
    try:
        if current is None:
            created = ui.write(automation_service.create, form_input(), actor=ui.actor())
            created_name = ui.text(created.automation.name)
            st.session_state["flash"] = f"Automation “{created_name}” created. Schedule it next."
            st.session_state["auto_pending_select"] = str(created.automation.id)
            st.session_state[SECRET_ONCE] = created.signing_secret
            for key in [key for key in st.session_state if str(key).startswith(k)]:
                del st.session_state[key]  # a fresh "new" form next time
        else:
            ui.write(automation_service.update, current.id, form_input(), actor=ui.actor())
            st.session_state["flash"] = "Automation saved."
        st.session_state.pop(k + "errors", None)
    except ValidationFailed as exc:
        st.session_state[k + "errors"] = forms.errors_by_field(exc)
    except StepwiseError as exc:  # a quota, say: about the save, not a field
        st.session_state[k + "save_error"] = str(exc)
    st.rerun()
if save_error := st.session_state.pop(k + "save_error", None):
    st.error(ui.text(save_error))

if current is not None:
    if cols[1].button("Test run", icon=":material/science:", key=k + "test", width="stretch"):
        try:
            run_input = parse_run_input(st.session_state.get(k + "run_input"))
            started = executions.run_now(current.id, actor=ui.actor(), run_input=run_input)
            st.session_state["auto_test_run"] = str(started)
        except ValidationFailed as exc:
            st.error(ui.text(f"Test run input: {exc.for_field('input')}"))
        except StepwiseError as exc:
            st.error(ui.text(exc))
    if cols[3].button(
        "New signing secret", icon=":material/key:", key=k + "rotate", width="stretch"
    ):
        st.session_state["auto_confirm_rotate"] = choice
    if st.session_state.get("auto_confirm_rotate") == choice:
        st.warning(
            f"Make a new signing secret for “{ui.text(current.name)}”? Its calls are signed "
            "with the new one at once and the old one stops: your agent refuses them until "
            "it has the new secret (the bundled demo agent picks it up by itself)."
        )
        yes, no = st.columns(2)
        if yes.button("Yes, make a new secret", type="primary", key=k + "rotate_yes"):
            secret = ui.write(
                automation_service.rotate_signing_secret, current.id, actor=ui.actor()
            )
            st.session_state.pop("auto_confirm_rotate", None)
            st.session_state[SECRET_ONCE] = secret
            st.session_state["flash"] = "New signing secret: calls are signed with it from now on."
            st.rerun()
        if no.button("Cancel", key=k + "rotate_no"):
            st.session_state.pop("auto_confirm_rotate", None)
            st.rerun()
    if cols[2].button("Delete", icon=":material/delete:", key=k + "delete", width="stretch"):
        st.session_state["auto_confirm_delete"] = choice
    if st.session_state.get("auto_confirm_delete") == choice:
        open_runs = ui.read(
            queries.count_executions,
            ExecutionFilters(statuses=OPEN_STATUSES, automation_id=current.id),
        )
        st.warning(
            f"Delete “{ui.text(current.name)}”? Its {current.schedules} schedule(s) stop and its "
            f"{open_runs} open run(s), queued, running or waiting, are cancelled (a running one "
            "stops before its next step); the history stays."
        )
        yes, no = st.columns(2)
        if yes.button("Yes, delete it", type="primary", key=k + "delete_yes"):
            cancelled = ui.write(automation_service.delete, current.id, actor=ui.actor())
            st.session_state.pop("auto_confirm_delete", None)
            st.session_state["flash"] = f"Automation deleted; {cancelled} open run(s) cancelled."
            st.session_state["auto_pending_select"] = NEW
            st.rerun()
        if no.button("Keep it", key=k + "delete_no"):
            st.session_state.pop("auto_confirm_delete", None)
            st.rerun()


def show_test_run(execution_id: uuid.UUID) -> None:
    """Poll briefly for the run to finish (or to wait: for an agent's callback, a person or
    a sleep), then show each step's outcome."""
    detail = ui.read(queries.execution_detail, execution_id)
    deadline = time.monotonic() + TEST_RUN_WAIT_S
    with st.spinner("Running the automation against the agent…"):
        while detail and detail.execution.status in TEST_RUN_BUSY:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
            detail = ui.read(queries.execution_detail, execution_id)
    if detail is None:
        return
    execution = detail.execution
    st.markdown(f"**Test run** `{execution.id}`: {ui.badge_md(execution.status)}")
    ui.execution_link(execution.id, "Open the execution's page")
    if execution.status == ExecutionStatus.WAITING:
        st.info("Waiting (for the agent's answer, an approval or a sleep): follow it on its page.")
    elif execution.status in OPEN_STATUSES:
        st.info("Still running: no worker may be up. Follow it on its page.")
    if execution.error:
        st.error(ui.text(execution.error))
    if detail.steps:
        ui.dataframe(
            pd.DataFrame(
                {
                    **ui.step_columns(detail.steps),
                    "Response": [(s.response_body or s.error or "")[:300] for s in detail.steps],
                }
            ),
            hide_index=True,
            width="stretch",
            column_config={"Status": ui.status_column()},
        )


if current is not None:
    with st.container(border=True):
        notifications.automation_notifications(current.id)
    with st.container(border=True):
        webhook_section(current.id, k)

if (test_run := st.session_state.get("auto_test_run")) and current is not None:
    with test_run_area:
        show_test_run(uuid.UUID(test_run))
