"""An automation's execution grid, as Airflow draws it: recent executions as columns (oldest
left), the execution itself and then each step as rows, every cell in its status colour; a
click on a cell opens that execution's page."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

from dashboard import ui
from db.queries import ExecutionGrid

EXECUTION_ROW = "whole execution"
NOT_RUN = "not run"
SELECTION = "cell"  # the chart's selection parameter: the execution clicked


def cells(grid: ExecutionGrid) -> list[dict[str, Any]]:
    """One cell per execution and row: its status, then each step's last attempt."""
    rows = [EXECUTION_ROW, *(f"{n}. {name}" for n, name in enumerate(grid.step_names, 1))]
    out: list[dict[str, Any]] = []
    for position, execution in enumerate(reversed(grid.executions)):
        for index, row in enumerate(rows):
            status = (
                execution.status if index == 0 else grid.cells.get((execution.id, index), NOT_RUN)
            )
            out.append(
                {
                    "position": position,
                    "row": row,
                    "status": status,
                    "execution_id": str(execution.id),
                    "queued": ui.fmt_time(execution.queued_at),
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
            x=alt.X("position:O", title="executions, oldest → newest", axis=alt.Axis(labels=False)),
            y=alt.Y("row:N", sort=rows, title=None, axis=alt.Axis(labelLimit=200)),
            color=alt.Color(
                "status:N",
                scale=alt.Scale(domain=domain, range=colors),
                legend=alt.Legend(title=None, orient="bottom", direction="horizontal"),
            ),
            tooltip=[
                alt.Tooltip("row:N", title="row"),
                alt.Tooltip("status:N"),
                alt.Tooltip("queued:N", title="queued"),
                alt.Tooltip("execution_id:N", title="execution"),
            ],
        )
        .add_params(pick)
    )
    return drawn


def height(grid: ExecutionGrid) -> int:
    return 130 + 34 * (len(grid.step_names) + 1)


def chosen_execution(event: Any) -> str | None:
    """The execution id of the cell clicked, from `st.altair_chart(on_select=...)`'s event."""
    picked = (event.get("selection") or {}).get(SELECTION) or []
    return str(picked[0]["execution_id"]) if picked and "execution_id" in picked[0] else None
