"""An automation's run grid, as Airflow draws it: recent runs as columns (oldest left),
the run itself and then each step as rows, every cell in its status colour; a click on
a cell opens that run's page."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

from dashboard import ui
from db.queries import RunGrid

RUN_ROW = "whole run"
NOT_RUN = "not run"
SELECTION = "cell"  # the chart's selection parameter: the run clicked


def cells(grid: RunGrid) -> list[dict[str, Any]]:
    """One cell per run and row: the run's status, then each step's last attempt."""
    rows = [RUN_ROW, *(f"{n}. {name}" for n, name in enumerate(grid.step_names, 1))]
    out: list[dict[str, Any]] = []
    for position, run in enumerate(reversed(grid.runs)):
        for index, row in enumerate(rows):
            status = run.status if index == 0 else grid.cells.get((run.id, index), NOT_RUN)
            out.append(
                {
                    "position": position,
                    "row": row,
                    "status": status,
                    "run_id": str(run.id),
                    "queued": ui.fmt_time(run.queued_at),
                }
            )
    return out


def chart(grid: RunGrid) -> alt.Chart:
    frame = pd.DataFrame(cells(grid))
    rows = list(dict.fromkeys(frame["row"]))
    pick = alt.selection_point(fields=["run_id"], name=SELECTION, on="click")
    domain = [*ui.STATUS_COLORS, NOT_RUN]
    colors = [*ui.STATUS_COLORS.values(), "#eef0f3"]
    drawn: alt.Chart = (
        alt.Chart(frame)
        .mark_rect(stroke="white", strokeWidth=2, cornerRadius=3, cursor="pointer")
        .encode(
            x=alt.X("position:O", title="runs, oldest → newest", axis=alt.Axis(labels=False)),
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
                alt.Tooltip("run_id:N", title="run"),
            ],
        )
        .add_params(pick)
    )
    return drawn


def height(grid: RunGrid) -> int:
    return 130 + 34 * (len(grid.step_names) + 1)


def chosen_run(event: Any) -> str | None:
    """The run id of the cell clicked, from `st.altair_chart(on_select=...)`'s event."""
    picked = (event.get("selection") or {}).get(SELECTION) or []
    return str(picked[0]["run_id"]) if picked and "run_id" in picked[0] else None
