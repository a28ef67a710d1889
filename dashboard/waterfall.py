"""A run's step waterfall: when each attempt of each step ran, and the waits between them.

`bars` (a chain: a row per step) and `lanes` (a graph: a lane per call, so that steps that
ran at the same time are side by side) are plain arithmetic over the stored step runs
(tested without a browser); `chart` draws the bars with Altair in the dashboard's status
palette.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta

import altair as alt
import pandas as pd

from core.vocabulary import StepStatus
from dashboard import ui
from db.queries import StepRunRow

MIN_WIDTH = 0.004  # of the whole span: a 3 ms step is still a visible sliver
# A step run not ended yet: its bar grows to now while the run is live (a wait's too: the
# agent's callback, a person or the clock may take hours, and the bar shows how long).
OPEN_STEP = (StepStatus.RUNNING, StepStatus.WAITING)


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
    rank: int = 0  # the row's place from the top (a graph's lanes; a chain's by step number)
    call: str = ""  # a graph's call: its step key, and `#index` for an item of a fan-out

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
        in_flight = live and step.finished_at is None and step.status in OPEN_STEP
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


# A fan-out with more items than this shares lanes among its items (an item starts on the
# first of its step's lanes free by then) rather than a lane each.
MAX_ITEM_LANES = 12


def call_label(step: StepRunRow) -> str:
    """A graph's step run as the page names it: its key, `#index` for a fan-out's item."""
    return step.step_key if step.item is None else f"{step.step_key} #{step.item}"


def ran(step: StepRunRow) -> bool:
    """Whether a graph's step run is a call or a fan-out (not a step skipped, or cancelled
    before any call: the engine's marks, with nothing in their request)."""
    return bool(step.request) or step.status not in (StepStatus.SKIPPED, StepStatus.CANCELLED)


def lanes(
    steps: list[StepRunRow], *, zero: datetime, now: datetime, live: bool = True
) -> list[Bar]:
    """A graph run's waterfall: a lane per call (a step, an item of a fan-out, a fan-out's own
    row spanning its items), its tries in order on it with the backoff between them, lanes
    ordered by their first start. Steps that overlapped in time are on separate lanes."""
    calls: dict[tuple[str, int | None], list[StepRunRow]] = {}
    for step in sorted(steps, key=lambda s: (s.started_at, s.attempt)):
        if ran(step):
            calls.setdefault((step.step_key, step.item), []).append(step)
    per_key: dict[str, int] = {}
    for key, item in calls:
        per_key[key] = per_key.get(key, 0) + (item is not None)
    names: dict[tuple[str, int | None], str] = {}
    free: dict[str, list[datetime]] = {}  # a crowded fan-out's lanes: when each is free
    for (key, item), tries in calls.items():
        if item is None:
            names[(key, item)] = key if key not in per_key or not per_key[key] else f"{key} (all)"
        elif per_key[key] <= MAX_ITEM_LANES:
            names[(key, item)] = f"{key} #{item}"
        else:
            ends = free.setdefault(key, [])
            start, end = tries[0].started_at, _end(tries[-1], now)
            lane = next((n for n, at in enumerate(ends) if at <= start), len(ends))
            ends[lane : lane + 1] = [end]
            names[(key, item)] = f"{key} lane {lane + 1}"
    order = {name: rank for rank, name in enumerate(dict.fromkeys(names.values()))}
    out: list[Bar] = []
    for call, tries in calls.items():
        row = names[call]
        for number, step in enumerate(tries, start=1):
            if number > 1 and (wait := _backoff(tries[number - 2], step, row, zero)) is not None:
                out.append(replace(wait, attempt=number, rank=order[row], call=call_label(step)))
            in_flight = live and step.finished_at is None and step.status in OPEN_STEP
            out.append(
                Bar(
                    row=row,
                    step_number=step.step_number,
                    attempt=number,
                    kind=step.status,
                    start_s=_offset(step.started_at, zero),
                    end_s=_offset(_end(step, now if in_flight else None), zero),
                    in_flight=in_flight,
                    rank=order[row],
                    call=call_label(step),
                )
            )
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
    rows = list(dict.fromkeys(b.row for b in sorted(found, key=lambda b: (b.rank, b.step_number))))
    base = alt.Chart(frame).encode(
        y=alt.Y("row:N", sort=rows, title=None, axis=alt.Axis(labelLimit=220)),
        x=alt.X("start_s:Q", title="seconds since the run started"),
        x2="shown_end:Q",
        tooltip=[
            alt.Tooltip("row:N", title="step"),
            *([alt.Tooltip("call:N", title="call")] if any(b.call for b in found) else []),
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
    # The attempt in flight (running or waiting) carries a marker at its moving end.
    flight = (
        alt.Chart(frame[frame["in_flight"]])
        .mark_point(shape="triangle-right", size=90, filled=True)
        .encode(
            y=alt.Y("row:N", sort=rows),
            x="shown_end:Q",
            color=alt.Color("kind:N", scale=ui.status_scale(with_backoff=True), legend=None),
        )
    )
    return alt.LayerChart(layer=[attempts, flight])


def height(found: list[Bar]) -> int:
    """Pixels for the chart: a band per step, plus the axis and the legend (Streamlit
    sizes a layered chart by this, not by the chart's own height)."""
    return 185 + 30 * len({b.row for b in found})  # the legend takes three rows
