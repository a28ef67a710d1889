"""Queues: what waits in Dramatiq's Redis queues, the worker processes, dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from core.errors import StepwiseError
from core.vocabulary import ExecutionStatus, Permission
from dashboard import ui
from db import queries
from service import queues as workspace_queues
from tasks import queues
from tasks.broker import QUEUES
from tasks.workers import WorkerInfo

st.title("Queues")
st.caption(
    "Redis only carries work; Postgres is the record. A run keeps one dead letter, for its last "
    "failure; retrying it (here or on the Executions page) re-opens it at the failed step and "
    "removes its dead letter. Counts are the deployment's; dead letters are this workspace's "
    "executions' (and the scheduler's own)."
)
if flash := st.session_state.pop("flash", None):
    st.success(flash)


@st.fragment(run_every=5)
def live() -> None:
    try:
        stats = queues.all_queue_stats()
        workers = workspace_queues.worker_processes(actor=ui.actor())
    except Exception as exc:  # Redis down is worth a clear message, not a traceback
        st.error(f"Redis is unreachable ({type(exc).__name__}): workers cannot get work.")
        return
    # One compact table, not four large figures per queue (a phone's first screen).
    ui.dataframe(
        pd.DataFrame(
            {
                "Queue": [q.queue for q in stats],
                "Waiting": [q.queued for q in stats],
                "In progress": [q.in_flight for q in stats],
                "Delayed": [q.delayed for q in stats],
                "Dead": [q.dead for q in stats],
            }
        ),
        hide_index=True,
        width="stretch",
    )
    st.subheader(f"Workers ({len(workers)})")
    if not workers:
        ui.empty_state(
            "No worker process has reported in the last 30 seconds.",
            "Start them with `make run` (or the `worker` and `dispatcher` Procfile processes); "
            "until then runs wait in the queue.",
        )
        return
    now = datetime.now(UTC)
    ui.dataframe(
        pd.DataFrame(
            {
                "Worker": [w.name for w in workers],
                "Queues": [", ".join(w.queues) for w in workers],
                "Running now": [running_now(w) for w in workers],
                "Processed": [w.processed for w in workers],
                "Failed": [w.failed for w in workers],
                "Last heartbeat": [ui.fmt_ago(w.last_beacon, now) for w in workers],
                "Up since": [ui.fmt_time(w.started) for w in workers],
            }
        ),
        hide_index=True,
        width="stretch",
        column_config={
            "Worker": st.column_config.TextColumn(help="host:pid of the worker process"),
            "Processed": st.column_config.NumberColumn(help="messages handled since it started"),
            "Failed": st.column_config.NumberColumn(
                help="of them, those that failed (a run that failed for good is one)"
            ),
        },
    )


def running_now(worker: WorkerInfo) -> str:
    """How many runs the worker holds, naming a few of this workspace's (`worker.runs`)."""
    if not worker.running:
        return "idle"
    if not worker.runs:
        return f"{worker.running} run(s)"
    shown = ", ".join(r[:8] for r in worker.runs)
    more = worker.running - len(worker.runs)
    return f"{worker.running} run(s): {shown}" + (f" and {more} more" if more > 0 else "")


live()

st.subheader("Dead letters")
queue = st.selectbox("Queue", QUEUES, key="q_queue")
try:
    letters = workspace_queues.dead_letters(queue, actor=ui.actor())
except Exception as exc:
    st.error(f"Redis is unreachable ({type(exc).__name__}).")
    st.stop()
if not letters:
    ui.empty_state(
        f"No dead letter in the {queue} queue.",
        "Messages land here after their last retry; their executions are on the Executions page.",
    )
    st.stop()
# Postgres is the record: a dead letter's error is its execution's stored error (Redis
# keeps no traceback for a run that failed for good).
executions = ui.read(
    queries.executions_by_id, {i for m in letters if (i := queues.execution_of(m)) is not None}
)


def execution_of_letter(letter: queues.DeadLetter) -> queries.ExecutionRow | None:
    execution_id = queues.execution_of(letter)
    return None if execution_id is None else executions.get(execution_id)


def what(letter: queues.DeadLetter) -> str:
    execution = execution_of_letter(letter)
    if execution is not None:
        return f"{execution.automation_name} · execution {str(execution.id)[:8]}"
    return (
        f"the scheduler's {letter.actor} job" if letter.actor != "run_execution" else "an execution"
    )


event = ui.dataframe(
    pd.DataFrame(
        {
            "Failed at": [ui.fmt_time(m.failed_at) for m in letters],
            "Execution": [what(m) for m in letters],
            "Status": [
                ui.status_cell(r.status if (r := execution_of_letter(m)) else None) for m in letters
            ],
            "Error": [
                (r.error if (r := execution_of_letter(m)) else None) or m.error or ""
                for m in letters
            ],
            "Retries": [m.retries for m in letters],
        }
    ),
    hide_index=True,
    width="stretch",
    column_config={
        "Execution": st.column_config.TextColumn(width=200),
        "Status": ui.status_column(width=90),
        "Error": st.column_config.TextColumn(width=360),
        "Retries": st.column_config.NumberColumn(width=60),
    },
    on_select="rerun",
    selection_mode="single-row",
    key="q_letters",
)
if (picked := event.selection.rows) and (
    execution := execution_of_letter(letters[picked[0]])
) is not None:
    ui.open_execution(execution.id)
st.caption("Click a row to open its execution.")
if not ui.can(Permission.MANAGE_QUEUES):
    st.caption("Admins of this workspace can retry or clean these dead letters.")
    st.stop()
by_id = {m.message_id: m for m in letters}
chosen = st.selectbox(
    "Message",
    list(by_id),
    format_func=lambda i: f"{what(by_id[i])} · failed {ui.fmt_time(by_id[i].failed_at)}",
    key="q_message",
)
a, b, _ = st.columns([1, 1, 3])
if a.button("Retry message", icon=":material/replay:", key="q_retry", width="stretch"):
    try:
        sent = workspace_queues.retry_dead_letter(queue, chosen, actor=ui.actor())
    except StepwiseError as exc:
        st.error(ui.text(exc))
        st.stop()
    st.session_state["flash"] = "Message sent again." if sent else "That message was already gone."
    st.rerun()
ages = {"any age": None, "over an hour": 1, "over a day": 24, "over a week": 24 * 7}
age_col, status_col = st.columns(2)
age = age_col.selectbox("Clean: dead letters", list(ages), key="q_clean_age")
statuses = status_col.multiselect(
    "whose run is now",
    [str(s) for s in ExecutionStatus],
    key="q_clean_status",
    placeholder="any status",
    help="A run retried since that succeeded, say: its dead letter says nothing any more.",
)
hours = ages[age]
cutoff = None if hours is None else datetime.now(UTC) - timedelta(hours=hours)
matching = [
    m
    for m in letters
    if (cutoff is None or m.failed_at < cutoff) and (not statuses or m.run_status in statuses)
]
if b.button("Clean dead letters", icon=":material/delete_sweep:", key="q_purge", width="stretch"):
    st.session_state["q_confirm_purge"] = queue
if st.session_state.get("q_confirm_purge") == queue:
    which = "" if hours is None else f" {age} old"
    whose = "" if not statuses else f" whose run is now {' or '.join(statuses)}"
    st.warning(
        f"Delete the {len(matching)} dead letter(s){which}{whose} of the {queue} queue? "
        "This cannot be undone."
    )
    yes, no = st.columns(2)
    if yes.button("Yes, delete them", type="primary", key="q_purge_yes"):
        try:
            purged = workspace_queues.clean_dead_letters(
                queue,
                actor=ui.actor(),
                older_than=None if hours is None else timedelta(hours=hours),
                statuses=statuses,
            )
        except StepwiseError as exc:
            st.error(ui.text(exc))
            st.stop()
        st.session_state.pop("q_confirm_purge", None)
        st.session_state["flash"] = f"Purged {purged} dead letter(s)."
        st.rerun()
    if no.button("Keep them", key="q_purge_no"):
        st.session_state.pop("q_confirm_purge", None)
        st.rerun()
