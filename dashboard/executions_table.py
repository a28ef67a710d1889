"""The table every page lists executions in (Executions, a schedule's page): a click on a
row opens that execution's own page."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import ui
from db import queries


def history_table(rows: list[queries.ExecutionRow]) -> pd.DataFrame:
    # What tells runs apart comes first, the error included. History is ordered by the time
    # a run was queued (`queries.HISTORY_ORDER`: its indexes, cursors and time filters), so
    # that time is the first one shown; a backfilled slot's own time follows.
    return pd.DataFrame(
        {
            "Status": [ui.status_cell(r.status) for r in rows],
            "Automation": [r.automation_name for r in rows],
            "Steps": [r.steps_done for r in rows],
            "Error": [r.error or "" for r in rows],
            "Queued": [ui.fmt_time(r.queued_at) for r in rows],
            "Duration": [ui.fmt_duration(r.duration_s) for r in rows],
            "Scheduled for": [ui.fmt_time(r.scheduled_for) for r in rows],
            "Trigger": [r.trigger for r in rows],
            "Attempt": [r.attempt for r in rows],
            "Id": [str(r.id) for r in rows],
        }
    )


# Runs in flight are ordered by their slot (`queries.executions_in_flight`): it comes first.
IN_FLIGHT_COLUMNS = [
    "Status",
    "Automation",
    "Steps",
    "Error",
    "Scheduled for",
    "Duration",
    "Trigger",
    "Attempt",
    "Queued",
    "Id",
]


COLUMNS = {
    "Status": ui.status_column(width=100),
    "Automation": st.column_config.TextColumn(width=170),  # a name of some 25 characters
    "Steps": st.column_config.TextColumn(width=130),
    "Error": st.column_config.TextColumn(width=280),
    "Queued": st.column_config.TextColumn(width=170),
    "Scheduled for": st.column_config.TextColumn(width=170),
    "Duration": st.column_config.TextColumn(width=90),
    "Trigger": st.column_config.TextColumn(width=80),
    "Attempt": st.column_config.NumberColumn(width=70),
    "Id": st.column_config.TextColumn(width=90),
}


def executions_table(
    rows: list[queries.ExecutionRow], key: str, columns: list[str] | None = None
) -> None:
    """A table of executions (`columns` of `history_table`, in that order: all by default); a
    click on a row opens that execution's page."""
    frame = history_table(rows)
    event = ui.dataframe(
        frame if columns is None else frame[columns],
        hide_index=True,
        width="stretch",
        column_config=COLUMNS,
        on_select="rerun",
        selection_mode="single-row",
        key=key,
    )
    if chosen := event.selection.rows:
        ui.open_execution(rows[chosen[0]].id)
