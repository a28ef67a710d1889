"""A run's step waterfall: when each attempt of each step ran, and the waits between them.

`bars` is plain arithmetic over the stored step runs (tested without a browser);
`chart` draws the bars with Altair in the dashboard's status palette.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import altair as alt
import pandas as pd

from core.vocabulary import ExecutionStatus
from dashboard import ui
from db.queries import StepRunRow

MIN_WIDTH = 0.004  # of the whole span: a 3 ms step is still a visible sliver


@dataclass(frozen=True)
class Bar:
    """One attempt of a step (or the backoff wait before its next attempt), in seconds
    from the run's first start."""

    row: str  # "2. fetch invoices": one row per step
    step_number: int
    attempt: int
    kind: str  # the attempt's status, or ui.BACKOFF
    start_s: float
    end_s: float
    in_flight: bool  # the attempt is still running: its bar ends now

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def origin(steps: list[StepRunRow], started_at: datetime | None) -> datetime | None:
    """Time zero of the waterfall: the run's start, or its first step's if earlier."""
    starts = [s.started_at for s in steps] + ([started_at] if started_at else [])
    return min(starts, default=None)


def bars(steps: list[StepRunRow], *, zero: datetime, now: datetime, live: bool = True) -> list[Bar]:
    """Every attempt as a bar, and a backoff bar wherever a step waited between an attempt
    and the next one. While the run is `live`, a running attempt ends at `now`."""
    out: list[Bar] = []
    previous: dict[int, StepRunRow] = {}
    for step in sorted(steps, key=lambda s: (s.step_number, s.attempt, s.started_at)):
        row = f"{step.step_number}. {step.step_name}".rstrip(". ")
        before = previous.get(step.step_number)
        if before is not None and (wait := _backoff(before, step, row, zero)) is not None:
            out.append(wait)
        in_flight = live and step.finished_at is None and step.status == ExecutionStatus.RUNNING
        out.append(
            Bar(
                row=row,
                step_number=step.step_number,
                attempt=step.attempt,
                kind=step.status,
                start_s=_offset(step.started_at, zero),
                end_s=_offset(_end(step, now if in_flight else None), zero),
                in_flight=in_flight,
            )
        )
        previous[step.step_number] = step
    return out


def _end(step: StepRunRow, now: datetime | None) -> datetime:
    """When an attempt ended: as stored, else by its duration, else `now` (in flight)."""
    if step.finished_at is not None:
        return step.finished_at
    if step.duration_ms is not None:
        return step.started_at + timedelta(milliseconds=step.duration_ms)
    return max(now, step.started_at) if now is not None else step.started_at


def _backoff(before: StepRunRow, step: StepRunRow, row: str, zero: datetime) -> Bar | None:
    """The wait between an attempt that ended and the next attempt of the same step."""
    ended = _end(before, None)
    if step.started_at <= ended:
        return None
    return Bar(
        row=row,
        step_number=step.step_number,
        attempt=step.attempt,
        kind=ui.BACKOFF,
        start_s=_offset(ended, zero),
        end_s=_offset(step.started_at, zero),
        in_flight=False,
    )


def _offset(at: datetime, zero: datetime) -> float:
    return (at - zero).total_seconds()


def chart(found: list[Bar]) -> alt.LayerChart:
    """The waterfall: steps as rows, time across, attempts coloured by status."""
    span = max((b.end_s for b in found), default=1.0) or 1.0
    frame = pd.DataFrame(
        [
            {
                **asdict(b),
                "shown_end": max(b.end_s, b.start_s + span * MIN_WIDTH),
                "what": ui.BACKOFF if b.kind == ui.BACKOFF else f"attempt {b.attempt}",
                "duration": ui.fmt_duration(b.duration_s),
                "note": "in flight" if b.in_flight else "",
            }
            for b in found
        ]
    )
    rows = list(dict.fromkeys(b.row for b in sorted(found, key=lambda b: b.step_number)))
    base = alt.Chart(frame).encode(
        y=alt.Y("row:N", sort=rows, title=None, axis=alt.Axis(labelLimit=220)),
        x=alt.X("start_s:Q", title="seconds since the run started"),
        x2="shown_end:Q",
        tooltip=[
            alt.Tooltip("row:N", title="step"),
            alt.Tooltip("what:N", title="what"),
            alt.Tooltip("kind:N", title="status"),
            alt.Tooltip("start_s:Q", title="start (s)", format=".2f"),
            alt.Tooltip("duration:N", title="duration"),
            alt.Tooltip("note:N", title=" "),
        ],
    )
    attempts = base.mark_bar(cornerRadius=2, height=18).encode(
        color=alt.Color(
            "kind:N",
            scale=ui.status_scale(with_backoff=True),
            # In rows of three: one long row ran off a phone's screen.
            legend=alt.Legend(title=None, orient="bottom", columns=3),
        ),
        opacity=alt.condition("datum.kind == 'backoff'", alt.value(0.55), alt.value(1.0)),
    )
    # The attempt in flight carries a marker at its moving end.
    flight = (
        alt.Chart(frame[frame["in_flight"]])
        .mark_point(shape="triangle-right", size=90, filled=True, color=ui.STATUS_COLORS["running"])
        .encode(y=alt.Y("row:N", sort=rows), x="shown_end:Q")
    )
    return alt.LayerChart(layer=[attempts, flight])


def height(found: list[Bar]) -> int:
    """Pixels for the chart: a band per step, plus the axis and the legend (Streamlit
    sizes a layered chart by this, not by the chart's own height)."""
    return 185 + 30 * len({b.step_number for b in found})  # the legend takes three rows
