"""Queues: what waits in Dramatiq's Redis queues, which workers are alive, dead letters."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import StepwiseError
from core.vocabulary import Permission
from dashboard import ui
from tasks import actions, queues
from tasks.broker import QUEUES

st.title("Queues")
st.caption(
    "Redis only carries work; Postgres is the record. Retrying a dead run here re-opens its "
    "execution at the failed step, as Retry on the Executions page does. Counts are the "
    "deployment's; dead letters are this workspace's runs' (and the scheduler's own)."
)
if flash := st.session_state.pop("flash", None):
    st.success(flash)


@st.fragment(run_every=5)
def live() -> None:
    try:
        stats = queues.all_queue_stats()
        workers = queues.live_workers()
    except Exception as exc:  # Redis down is worth a clear message, not a traceback
        st.error(f"Redis is unreachable ({type(exc).__name__}): workers cannot get work.")
        return
    for column, q in zip(st.columns(len(stats)), stats, strict=True):
        with column.container(border=True):
            st.markdown(f"**{q.queue}** queue")
            a, b, c, d = st.columns(4)
            a.metric("Queued", q.queued)
            b.metric("In progress", q.in_flight)
            c.metric("Delayed", q.delayed)
            d.metric("Dead", q.dead)
    st.subheader(f"Live workers ({len(workers)})")
    if not workers:
        ui.empty_state(
            "No worker has sent a heartbeat in the last minute.",
            "Start them with `make run` (or the `worker` and `dispatcher` Procfile processes); "
            "until then runs wait in the queue.",
        )
    else:
        st.dataframe(
            pd.DataFrame(
                {
                    "Worker": [w.worker_id for w in workers],
                    "Last heartbeat": [ui.fmt_time(w.last_seen) for w in workers],
                }
            ),
            hide_index=True,
            width="stretch",
        )


live()

st.subheader("Dead letters")
queue = st.selectbox("Queue", QUEUES, key="q_queue")
try:
    letters = actions.dead_letters(queue, actor=ui.actor())
except Exception as exc:
    st.error(f"Redis is unreachable ({type(exc).__name__}).")
    st.stop()
if not letters:
    ui.empty_state(
        f"No dead letter in the {queue} queue.",
        "Messages land here after their last retry; the failed runs are on the Executions page.",
    )
    st.stop()
st.dataframe(
    pd.DataFrame(
        {
            "Failed at": [ui.fmt_time(m.failed_at) for m in letters],
            "Actor": [m.actor for m in letters],
            "Args": [", ".join(map(str, m.args)) for m in letters],
            "Retries": [m.retries for m in letters],
            "Error": [m.error or "" for m in letters],
            "Message": [m.message_id for m in letters],
        }
    ),
    hide_index=True,
    width="stretch",
)
if not ui.can(Permission.MANAGE_QUEUES):
    st.caption("Admins of this workspace can retry or purge these dead letters.")
    st.stop()
by_id = {m.message_id: m for m in letters}
chosen = st.selectbox(
    "Message",
    list(by_id),
    format_func=lambda i: f"{by_id[i].actor}({', '.join(map(str, by_id[i].args))}) · {i[:8]}",
    key="q_message",
)
a, b, _ = st.columns([1, 1, 3])
if a.button("Retry message", icon=":material/replay:", key="q_retry", width="stretch"):
    try:
        sent = actions.retry_dead_letter(queue, chosen, actor=ui.actor())
    except StepwiseError as exc:
        st.error(ui.text(exc))
        st.stop()
    st.session_state["flash"] = "Message sent again." if sent else "That message was already gone."
    st.rerun()
if b.button("Purge dead letters", icon=":material/delete_sweep:", key="q_purge", width="stretch"):
    st.session_state["q_confirm_purge"] = queue
if st.session_state.get("q_confirm_purge") == queue:
    st.warning(
        f"Delete all {len(letters)} dead letter(s) of the {queue} queue? This cannot be undone."
    )
    yes, no = st.columns(2)
    if yes.button("Yes, purge", type="primary", key="q_purge_yes"):
        try:
            purged = actions.purge_dead_letters(queue, actor=ui.actor())
        except StepwiseError as exc:
            st.error(ui.text(exc))
            st.stop()
        st.session_state.pop("q_confirm_purge", None)
        st.session_state["flash"] = f"Purged {purged} dead letter(s)."
        st.rerun()
    if no.button("Keep them", key="q_purge_no"):
        st.session_state.pop("q_confirm_purge", None)
        st.rerun()
