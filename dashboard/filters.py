"""The history filters shared by Executions and Export; their values live in session state."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta

import streamlit as st

from core.vocabulary import ExecutionStatus, Trigger
from dashboard import ui
from db import queries
from db.queries import ExecutionFilters

RANGES = {
    "all": "All time",
    "1h": "Last hour",
    "24h": "Last 24 hours",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "custom": "Custom dates",
}
_DELTAS = {
    "1h": timedelta(hours=1),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


MAX_ERROR_SEARCH = 200

# The filters as they read in the page's URL (a shareable link), by session-state suffix.
URL_KEYS = {
    "status": "status",
    "automation": "automation",
    "schedule": "schedule",
    "trigger": "trigger",
    "range": "range",
    "error": "error",
}


def _from_url(prefix: str, names: dict[uuid.UUID, str]) -> None:
    """Fill the filters from the URL on the page's first draw; a value that is not a choice
    (a stale or edited link) is left out, never an error."""
    s, params = st.session_state, st.query_params
    if s.get(f"{prefix}_from_url"):
        return
    s[f"{prefix}_from_url"] = True
    statuses = [v for v in params.get_all("status") if v in set(ExecutionStatus)]
    if statuses:
        s[f"{prefix}_status"] = statuses
    automation = ui.uuid_or_none(params.get("automation"))
    if automation in names:
        s[f"{prefix}_automation"] = str(automation)
    if (schedule := ui.uuid_or_none(params.get("schedule"))) is not None:
        s[f"{prefix}_schedule"] = str(schedule)  # checked against the automation's below
    if params.get("trigger") in set(Trigger):
        s[f"{prefix}_trigger"] = params.get("trigger")
    if error := params.get("error"):
        s[f"{prefix}_error"] = error[:MAX_ERROR_SEARCH]
    if params.get("range") in RANGES and params.get("range") != "custom":
        s[f"{prefix}_range"] = params.get("range")


def _to_url(prefix: str) -> None:
    """Put the chosen filters in the URL (and drop those at their default)."""
    s = st.session_state
    wanted: dict[str, str | list[str]] = {}
    for name in URL_KEYS:
        value = s.get(f"{prefix}_{name}")
        if value and value != "all":
            wanted[name] = list(value) if isinstance(value, list) else str(value)
    for name in URL_KEYS:
        if name not in wanted and name in st.query_params:
            del st.query_params[name]
    for name, value in wanted.items():
        current = st.query_params.get_all(name)
        if current != (value if isinstance(value, list) else [value]):
            st.query_params[name] = value


def history_filters(prefix: str) -> ExecutionFilters:
    """Draw the filter row (keys `<prefix>_*`), kept in the page's URL, and return what it
    selects."""
    names = ui.read(queries.automation_names)
    _from_url(prefix, names)
    # Folded away, saying what is chosen: on a phone five filters stood ~600 px high
    # above the first row.
    with st.expander(summary(prefix, names), icon=":material/filter_list:"):
        return _draw(prefix, names)


def summary(prefix: str, names: dict[uuid.UUID, str]) -> str:
    """The filters chosen, in words, for the folded filter row."""
    s = st.session_state
    chosen = [", ".join(s.get(f"{prefix}_status") or [])]
    automation = ui.uuid_or_none(s.get(f"{prefix}_automation"))
    chosen.append(names.get(automation, "") if automation else "")
    chosen.append("one schedule" if s.get(f"{prefix}_schedule") else "")
    chosen.append(str(s.get(f"{prefix}_trigger") or ""))
    chosen.append(f"error contains “{s[f'{prefix}_error']}”" if s.get(f"{prefix}_error") else "")
    if (span := s.get(f"{prefix}_range", "all")) != "all":
        chosen.append(RANGES.get(span, "").lower())
    shown = [ui.text(c) for c in chosen if c]
    return "Filters: " + (" · ".join(shown) if shown else "none (every execution)")


def _draw(prefix: str, names: dict[uuid.UUID, str]) -> ExecutionFilters:
    s = st.session_state
    cols = st.columns([2, 2, 2, 1, 2])
    cols[0].multiselect(
        "Status", list(ExecutionStatus), key=f"{prefix}_status", placeholder="All statuses"
    )
    cols[1].selectbox(
        "Automation",
        ["", *map(str, names)],
        format_func=lambda i: names[uuid.UUID(i)] if i else "All automations",
        key=f"{prefix}_automation",
    )
    automation = s.get(f"{prefix}_automation") or None
    labels = ui.read(queries.schedule_labels, uuid.UUID(automation) if automation else None)
    if s.get(f"{prefix}_schedule") not in ("", None, *map(str, labels)):
        s[f"{prefix}_schedule"] = ""
    cols[2].selectbox(
        "Schedule",
        ["", *map(str, labels)],
        format_func=lambda i: labels[uuid.UUID(i)] if i else "All schedules",
        key=f"{prefix}_schedule",
    )
    cols[3].selectbox(
        "Trigger", ["", *Trigger], format_func=lambda t: t or "Any", key=f"{prefix}_trigger"
    )
    cols[4].selectbox("Queued", list(RANGES), format_func=RANGES.__getitem__, key=f"{prefix}_range")
    st.text_input(
        "Error contains",
        key=f"{prefix}_error",
        max_chars=MAX_ERROR_SEARCH,
        placeholder="HTTP 503, timed out, …",
    )
    since, until = _time_range(prefix)
    _to_url(prefix)
    schedule = s.get(f"{prefix}_schedule") or None
    return ExecutionFilters(
        statuses=tuple(s.get(f"{prefix}_status") or ()),
        automation_id=uuid.UUID(automation) if automation else None,
        schedule_id=uuid.UUID(schedule) if schedule else None,
        trigger=s.get(f"{prefix}_trigger") or None,
        since=since,
        until=until,
        error_contains=str(s.get(f"{prefix}_error") or ""),
    )


def selection(prefix: str) -> tuple[object, ...]:
    """What the filter row has chosen, as chosen: "last 24 hours", not the instant it
    resolved to at this rerun (that moves with the clock)."""
    s = st.session_state
    keys = [*URL_KEYS, "from", "until"]
    return tuple(
        tuple(value) if isinstance(value := s.get(f"{prefix}_{k}"), list) else value for k in keys
    )


def _time_range(prefix: str) -> tuple[datetime | None, datetime | None]:
    choice = st.session_state.get(f"{prefix}_range", "all")
    if choice in _DELTAS:
        return datetime.now(UTC) - _DELTAS[choice], None
    if choice != "custom":
        return None, None
    today = datetime.now(UTC).date()
    a, b = st.columns(2)
    start = a.date_input("From (UTC)", value=today - timedelta(days=7), key=f"{prefix}_from")
    end = b.date_input("Until (UTC, inclusive)", value=today, key=f"{prefix}_until")
    return (
        datetime.combine(start, time(0), tzinfo=UTC),
        datetime.combine(end + timedelta(days=1), time(0), tzinfo=UTC),
    )
