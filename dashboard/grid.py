"""An automation's execution grid, as Airflow draws it: recent executions as columns (oldest
left), the execution itself and then each step (a graph's: each step key) as rows, every
cell in its status colour; a click on a cell opens that execution's page."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

from dashboard import ui
from db.queries import ExecutionGrid

EXECUTION_ROW = "whole execution"
NOT_RUN = "not run"
SELECTION = "cell"  # the chart's selection parameter: the execution clicked


def column_labels(grid: ExecutionGrid) -> list[str]:
    """Each column's time (oldest first): when its run was queued, to the second; a second
    run in the same second is told apart by a number."""
    labels: list[str] = []
    for execution in reversed(grid.executions):
        label = ui.fmt_column_time(execution.queued_at)
        if label in labels:
            label = f"{label} #{sum(x.startswith(label) for x in labels) + 1}"
        labels.append(label)
    return labels


def cells(grid: ExecutionGrid) -> list[dict[str, Any]]:
    """One cell per execution and row: its status, then each step's last attempt, with the
    column's time and what a hover tells (run, status, duration)."""
    rows = [EXECUTION_ROW, *(f"{n}. {name}" for n, name in enumerate(grid.step_names, 1))]
    labels = column_labels(grid)
    out: list[dict[str, Any]] = []
    for position, execution in enumerate(reversed(grid.executions)):
        for index, row in enumerate(rows):
            if index == 0:
                status, took = execution.status, execution.duration_s
            else:
                status = grid.cells.get((execution.id, index), NOT_RUN)
                ms = grid.durations_ms.get((execution.id, index))
                took = None if ms is None else ms / 1000
            out.append(
                {
                    "position": position,
                    "column": labels[position],
                    "row": row,
                    "status": status,
                    "execution_id": str(execution.id),
                    "run": f"{ui.fmt_time(execution.queued_at)} · {execution.trigger}",
                    "duration": ui.fmt_duration(took),
                }
            )
    return out


def chart(grid: ExecutionGrid) -> alt.Chart:
    frame = pd.DataFrame(cells(grid))
    rows = list(dict.fromkeys(frame["row"]))
    pick = alt.selection_point(fields=["execution_id"], name=SELECTION, on="click")
    domain = [*ui.STATUS_COLORS, NOT_RUN]
    colors = [*ui.STATUS_COLORS.values(), "#eef0f3"]
    drawn: alt.Chart = (
        alt.Chart(frame)
        .mark_rect(stroke="white", strokeWidth=2, cornerRadius=3, cursor="pointer")
        .encode(
            x=alt.X(
                "column:O",
                sort=column_labels(grid),
                title="executions by time queued, oldest → newest",
                axis=alt.Axis(labelAngle=-45, labelLimit=120),
            ),
            y=alt.Y("row:N", sort=rows, title=None, axis=alt.Axis(labelLimit=200)),
            color=alt.Color(
                "status:N",
                scale=alt.Scale(domain=domain, range=colors),
                # In rows of three: one long row ran off a phone's screen.
                legend=alt.Legend(title=None, orient="bottom", columns=3),
            ),
            tooltip=[
                alt.Tooltip("run:N", title="run"),
                alt.Tooltip("row:N", title="row"),
                alt.Tooltip("status:N"),
                alt.Tooltip("duration:N", title="duration"),
                alt.Tooltip("execution_id:N", title="execution"),
            ],
        )
        .add_params(pick)
    )
    return drawn


def height(grid: ExecutionGrid) -> int:
    # The rows, then the columns' times (slanted) and the legend's three rows.
    return 260 + 34 * (len(grid.step_names) + 1)


def chosen_execution(event: Any) -> str | None:
    """The execution id of the cell clicked, from `st.altair_chart(on_select=...)`'s event."""
    picked = (event.get("selection") or {}).get(SELECTION) or []
    return str(picked[0]["execution_id"]) if picked and "execution_id" in picked[0] else None
