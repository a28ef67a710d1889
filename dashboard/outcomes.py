"""The overview's outcome chart: finished runs per hour or day, stacked by status.

Each bucket is a band of an ordinal x axis, so a bar is as wide as its hour or day
allows and the last one is never cut at the edge (on a time scale bars were a few
pixels wide, centred on their bucket's start). Run counts on the y axis are whole.
Hours read in the browser's zone; days are the query's UTC days.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from dashboard import ui
from db.figures import Bucket, OutcomePoint

# Vega-Lite time units: one band per bucket, labelled as a person reads it.
X_FIELDS: dict[str, tuple[str, str, str]] = {
    "hour": ("yearmonthdatehours(bucket):O", "%H:%M", "%b %d %H:%M"),
    "day": ("utcyearmonthdate(bucket):O", "%b %d", "%b %d"),
}


def frame(points: list[OutcomePoint]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "bucket": [p.bucket for p in points],
            "status": [p.status for p in points],
            "count": [p.count for p in points],
        }
    )


def chart(data: pd.DataFrame, bucket: Bucket) -> alt.Chart:
    field, label, when = X_FIELDS[bucket]
    built: alt.Chart = (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X(
                field,
                title=None,
                axis=alt.Axis(format=label, labelAngle=0, labelOverlap=True),
                scale=alt.Scale(paddingInner=0.15),
            ),
            y=alt.Y("count:Q", title="runs", stack=True, axis=alt.Axis(tickMinStep=1, format="d")),
            # Below the bars: on a phone a legend at the side takes a third of the width.
            color=alt.Color(
                "status:N",
                scale=ui.status_scale(),
                title=None,
                legend=alt.Legend(orient="bottom", columns=3),
            ),
            tooltip=[
                alt.Tooltip(field, title="when", format=when),
                alt.Tooltip("status:N"),
                alt.Tooltip("count:Q", format="d", title="runs"),
            ],
        )
        .properties(height=260)
    )
    return built
