"""A step that waits, on the execution page: what it waits for, until when, and for an
approval its message and the person's decision.

The sentences are plain functions of the step run's `wait` (`{"kind": ...}`, see
db/models.py) and `wait_until`, tested without a server; `show` draws them, and for an
approval still open, the Approve / Reject form for a member whose role allows (the service
checks the role again) or why not. Every text the agent or the automation gave (a progress
note, an approval's rendered message, a comment) reaches the page through `ui.text`: shown
as typed, never as Markdown or HTML.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import streamlit as st

from core.errors import StepwiseError
from core.vocabulary import Role, StepKind, StepStatus
from core.waits import MAX_DECISION_COMMENT, role_phrase
from dashboard import ui
from db.queries import StepRunRow
from service import waits as service_waits

# Steps that call no agent: their step runs have no request to show.
NO_CALL = (StepKind.APPROVAL, StepKind.SLEEP)
# An approval's `decided.by` when nobody decided by its deadline (`on_timeout` did).
TIMEOUT = "timeout"


def kind_of(row: StepRunRow) -> str | None:
    """What the step run waits (or waited) for: async, approval or sleep; None for a call."""
    return None if row.wait is None else str(row.wait.get("kind") or "") or None


def role_of(wait: dict[str, Any]) -> Role:
    """The weakest role that may decide an approval (an editor unless it says otherwise)."""
    try:
        return Role(wait.get("role") or Role.EDITOR)
    except ValueError:
        return Role.ADMIN  # a role this version does not know: only the strongest decides


def may_decide(role: Role | str, wait: dict[str, Any]) -> bool:
    """Whether a member with `role` may decide the approval `wait` (its role or stronger)."""
    ranks = list(Role)  # weakest first
    try:
        return ranks.index(Role(role)) >= ranks.index(role_of(wait))
    except ValueError:
        return False


def deciders(role: Role | str) -> str:
    """Who may decide an approval that `role` may decide: "an editor or an admin"."""
    stronger = list(Role)[list(Role).index(Role(role)) :]
    return " or ".join(role_phrase(r) for r in stronger)


def refusal(role: Role | str, wait: dict[str, Any]) -> str:
    """Why a member with `role` sees no Approve / Reject."""
    return f"Only {deciders(role_of(wait))} may decide this approval; your role here is {role}."


def waiting_for(wait: dict[str, Any], wait_until: datetime | None, zone: str) -> str:
    """What a waiting step waits for, in one line: "Waiting for the agent — 40 % parsing",
    "Waiting for approval by an editor", "Sleeping until 2026-12-07 14:05:00 UTC"."""
    kind = wait.get("kind")
    if kind == StepKind.APPROVAL:
        return f"Waiting for approval by {role_phrase(role_of(wait))}"
    if kind == StepKind.SLEEP:
        return f"Sleeping until {ui.fmt_time(wait_until, zone)}"
    progress, note = wait.get("progress"), wait.get("note")
    said = " ".join(
        part for part in (f"{progress} %" if progress is not None else "", note or "") if part
    )
    return "Waiting for the agent" + (f" — {said}" if said else "")


def deadline(
    wait: dict[str, Any], wait_until: datetime | None, now: datetime, zone: str
) -> str | None:
    """When the wait ends by itself and what then happens; None for a sleep (its end is its
    headline) or a wait without a deadline."""
    if wait_until is None or wait.get("kind") == StepKind.SLEEP:
        return None
    when = f"{ui.fmt_time(wait_until, zone)} ({ui.fmt_ago(wait_until, now)})"
    if wait.get("kind") == StepKind.APPROVAL:
        verdict = "approved" if wait.get("on_timeout") == "approve" else "rejected"
        return f"Deadline {when}: undecided by then, it is {verdict}."
    return f"Deadline {when}: without the agent's answer by then, the step fails."


def last_progress(wait: dict[str, Any], now: datetime) -> str | None:
    """When the agent last reported progress ("progress reported 2 min 5 s ago")."""
    at = _instant(wait.get("progress_at"))
    return None if at is None else f"Progress reported {ui.fmt_ago(at, now)}."


def decision(wait: dict[str, Any], zone: str) -> str | None:
    """An approval's decision once made: "Approved by ada at <instant>: “ship it”";
    None while undecided."""
    decided = wait.get("decided")
    if not isinstance(decided, dict):
        return None
    verdict = "Approved" if decided.get("approved") else "Rejected"
    at = ui.fmt_time(_instant(decided.get("at")), zone)
    by = str(decided.get("by") or "")
    said = (
        f"{verdict} on timeout at {at}: nobody decided by the deadline"
        if by == TIMEOUT
        else f"{verdict} by {by} at {at}"
    )
    comment = decided.get("comment")
    return said + (f": “{comment}”" if comment else "")


def _instant(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


# --- drawn -----------------------------------------------------------------------------------


def show(row: StepRunRow, execution_id: uuid.UUID, now: datetime) -> None:
    """A step's wait (its latest step run `row`): while it waits, what for, its progress and
    deadline (an approval: its message, then Approve / Reject or why not); once decided, the
    decision."""
    wait, zone = row.wait or {}, ui.viewer_timezone()
    kind = wait.get("kind")
    if row.status == StepStatus.WAITING:
        st.info(ui.text(waiting_for(wait, row.wait_until, zone)), icon=":material/hourglass_top:")
        if kind == StepKind.ASYNC and isinstance(wait.get("progress"), int):
            progress_bar(wait["progress"])
        notes = [deadline(wait, row.wait_until, now, zone), last_progress(wait, now)]
        if notes := [n for n in notes if n]:
            st.caption(ui.text(" ".join(notes)))
    if kind != StepKind.APPROVAL:
        return
    message(wait)
    if (decided := decision(wait, zone)) is not None:
        approved = bool(wait["decided"].get("approved"))
        icon = ":material/check_circle:" if approved else ":material/block:"
        (st.success if approved else st.warning)(ui.text(decided), icon=icon)
    elif row.status == StepStatus.WAITING:
        decide_form(row, execution_id)


def progress_bar(percent: int) -> None:
    """The agent's progress as a bar in the colour of `waiting` (st.progress is drawn in the
    theme's red, which reads as an error). Only a number reaches the HTML."""
    width = min(max(int(percent), 0), 100)
    color = ui.STATUS_COLORS[StepStatus.WAITING]
    st.html(
        f'<div role="progressbar" aria-valuenow="{width}" aria-valuemin="0" aria-valuemax="100" '
        'style="height:6px;border-radius:3px;background:#f1f3f5">'
        f'<div style="width:{width}%;height:6px;border-radius:3px;background:{color}"></div>'
        "</div>"
    )


def message(wait: dict[str, Any]) -> None:
    """The approval's message as rendered for whoever decides, as text."""
    st.markdown("**The approval's message**")
    with st.container(border=True):
        st.markdown(ui.text(wait.get("message") or "(no message)"))


def decide_form(row: StepRunRow, execution_id: uuid.UUID) -> None:
    """Approve / Reject with an optional comment, for a member whose role allows; the reason
    otherwise. A form: the page redraws every couple of seconds, and a comment being typed
    is kept until a button sends it."""
    wait, role = row.wait or {}, ui.actor().role
    if not may_decide(role, wait):
        st.caption(ui.text(refusal(role, wait)))
        return
    key = f"decide_{execution_id}_{row.step_key}"
    if refused := st.session_state.get(f"{key}_refused"):
        # Kept in the session: the page's next redraw (every couple of seconds) keeps it.
        st.error(ui.text(refused), icon=":material/error:")
    with st.form(key, border=False):
        comment = st.text_area(
            "Comment (optional)", key=f"{key}_comment", max_chars=MAX_DECISION_COMMENT, height=68
        )
        buttons = st.container(horizontal=True)
        approve = buttons.form_submit_button("Approve", type="primary", icon=":material/check:")
        reject = buttons.form_submit_button("Reject", icon=":material/close:")
    if approve or reject:
        st.session_state.pop(f"{key}_refused", None)
        _decide(execution_id, row.step_key, approve, comment.strip() or None, key=key)


def _decide(
    execution_id: uuid.UUID, step_key: str, approved: bool, comment: str | None, *, key: str
) -> None:
    try:
        ui.write(
            service_waits.decide,
            execution_id,
            step_key,
            approved=approved,
            comment=comment,
            actor=ui.actor(),
        )
    except StepwiseError as exc:
        st.session_state[f"{key}_refused"] = str(exc)
        st.rerun()
    st.session_state["execution_flash"] = ui.text(
        f"Approved {step_key}: the run goes on."
        if approved
        else f"Rejected {step_key}: the step fails or is skipped, as its approval says."
    )
    st.rerun()
