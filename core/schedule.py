"""A schedule's rules: its timing plus the policies, and what a dispatch tick makes of them.

`parse_schedule` turns what a person gives (`ScheduleInput`) into a
`ScheduleDefinition` once, with every rule checked (timing, misfire and overlap
policies, catch-up window, jitter); `plan_dispatch`, `initial_next_run_at` and
`decide_overlap` trust what they are given. No I/O, no clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from core.errors import FieldError, ValidationFailed
from core.limits import (
    DEFAULT_CATCHUP_WINDOW_S,
    MAX_CATCHUP_WINDOW_S,
    MAX_JITTER_S,
    MAX_RUN_ALL,
    MAX_SKIPPED_RECORDED,
)
from core.run_input import RunInput, parse_run_input
from core.text import UNSTORABLE, storable
from core.timing import (
    ScheduleSpec,
    Timing,
    as_utc,
    count_slots,
    first_slot,
    parse_timing,
    slots_from,
)
from core.vocabulary import (
    CompletedReason,
    MisfirePolicy,
    OverlapDecision,
    OverlapPolicy,
    ScheduleKind,
    one_of,
)


@dataclass(frozen=True)
class Preset:
    key: str
    label: str
    cron_expr: str | None


PRESETS: tuple[Preset, ...] = (
    Preset("every_minute", "Every minute", "* * * * *"),
    Preset("every_5_minutes", "Every 5 minutes", "*/5 * * * *"),
    Preset("every_15_minutes", "Every 15 minutes", "*/15 * * * *"),
    Preset("every_30_minutes", "Every 30 minutes", "*/30 * * * *"),
    Preset("hourly", "Hourly", "0 * * * *"),
    Preset("every_6_hours", "Every 6 hours", "0 */6 * * *"),
    Preset("daily_midnight", "Daily at 00:00", "0 0 * * *"),
    Preset("daily_9am", "Daily at 09:00", "0 9 * * *"),
    Preset("weekdays_9am", "Weekdays at 09:00", "0 9 * * 1-5"),
    Preset("weekly_monday_9am", "Weekly on Monday at 09:00", "0 9 * * 1"),
    Preset("monthly_1st_9am", "Monthly on the 1st at 09:00", "0 9 1 * *"),
    Preset("once", "Once at a chosen time", None),
)


def preset(key: str) -> Preset:
    """The preset named ``key``; ValidationFailed (field "preset") if there is none."""
    for candidate in PRESETS:
        if candidate.key == key:
            return candidate
    keys = ", ".join(p.key for p in PRESETS)
    raise ValidationFailed.single("preset", f"unknown preset {key!r}; use one of {keys}")


# --- the rules ----------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleInput:
    """A schedule as a person gives it: not validated yet."""

    spec: ScheduleSpec
    misfire_policy: str = MisfirePolicy.RUN_ONCE
    catchup_window_s: int = DEFAULT_CATCHUP_WINDOW_S
    overlap_policy: str = OverlapPolicy.SKIP
    jitter_s: int = 0
    enabled: bool = True
    input: Any = None  # JSON text (a form) or a decoded value (the API); None: no input


# A schedule's policies as a person gives them, in order (with `core.timing.TIMING_FIELDS`,
# every field of a schedule a request or a definitions file names, flat).
POLICY_FIELDS = tuple(f.name for f in fields(ScheduleInput) if f.name != "spec")


@dataclass(frozen=True)
class ScheduleDefinition:
    """A schedule whose every rule was checked by `parse_schedule`."""

    timing: Timing
    misfire_policy: MisfirePolicy
    catchup_window_s: int
    overlap_policy: OverlapPolicy
    jitter_s: int
    enabled: bool
    input: RunInput | None = None  # given to every run of the schedule


def catchup_window_cap(retention_days: int) -> int:
    """History must outlive the catch-up window, or a purged slot could run again."""
    return min(MAX_CATCHUP_WINDOW_S, retention_days * 86400)


def parse_schedule(data: ScheduleInput, *, retention_days: int) -> ScheduleDefinition:
    """Check every rule of `data` at once; raise ValidationFailed listing each problem."""
    errors: list[FieldError] = []
    timing = None
    try:
        timing = parse_timing(data.spec)
    except ValidationFailed as exc:
        errors += exc.errors
    policies = {
        "misfire_policy": (data.misfire_policy, MisfirePolicy),
        "overlap_policy": (data.overlap_policy, OverlapPolicy),
    }
    for field, (value, words) in policies.items():
        if not storable(value):
            errors.append(FieldError(field, UNSTORABLE))
        elif value not in set(words):
            errors.append(FieldError(field, f"must be one of {one_of(words)}"))
    window_cap = catchup_window_cap(retention_days)
    if not 0 <= data.catchup_window_s <= window_cap:
        errors.append(FieldError("catchup_window_s", f"must be between 0 and {window_cap} seconds"))
    if not 0 <= data.jitter_s <= MAX_JITTER_S:
        errors.append(FieldError("jitter_s", f"must be between 0 and {MAX_JITTER_S} seconds"))
    run_input = None
    try:
        run_input = parse_run_input(data.input)
    except ValidationFailed as exc:
        errors += exc.errors
    if errors or timing is None:
        raise ValidationFailed(errors)
    return ScheduleDefinition(
        timing=timing,
        misfire_policy=MisfirePolicy(data.misfire_policy),
        catchup_window_s=data.catchup_window_s,
        overlap_policy=OverlapPolicy(data.overlap_policy),
        jitter_s=data.jitter_s,
        enabled=data.enabled,
        input=run_input,
    )


# --- dispatch -----------------------------------------------------------------------


@dataclass(frozen=True)
class DispatchPlan:
    run: list[datetime]
    skipped: list[datetime]
    expired: int
    next_run_at: datetime | None
    completed_reason: CompletedReason | None
    catchup: int = 0  # the first `catchup` slots of `run` are missed ones, run late


def plan_dispatch(
    timing: Timing,
    *,
    next_run_at: datetime,
    now: datetime,
    horizon: timedelta,
    grace: timedelta,
    misfire_policy: MisfirePolicy,
    catchup_window_s: int,
    dispatched: int,
) -> DispatchPlan:
    """Which slots from ``next_run_at`` up to ``now + horizon`` run, are skipped or expire.

    Slots at or after ``now - grace`` are due and run (possibly later: the caller
    delays them). Older ones were missed: those before the catch-up window are only
    counted, the rest follow ``misfire_policy``. Only slots that run count towards
    max_runs (together with ``dispatched``).
    """
    now, due_from = as_utc(now), as_utc(now) - grace
    remaining = None if timing.max_runs is None else timing.max_runs - dispatched
    if remaining is not None and remaining <= 0:
        return DispatchPlan([], [], 0, None, CompletedReason.MAX_RUNS)
    # Slots before the window (or before due_from, if grace exceeds the window) expire.
    expire_before = min(due_from, now - timedelta(seconds=catchup_window_s))
    cursor, expired = as_utc(next_run_at), 0
    if cursor < expire_before:
        expired, cursor = count_slots(timing, cursor, expire_before), expire_before
    slots = slots_from(timing, cursor)
    missed, overflow, slot = _collect_missed(slots, due_from)
    run, skipped = _apply_misfire(missed, misfire_policy)
    run = run[:remaining]
    catchup = len(run)
    while slot is not None and slot < now + horizon and (remaining is None or len(run) < remaining):
        run.append(slot)
        slot = next(slots, None)
    expired += overflow + max(0, len(skipped) - MAX_SKIPPED_RECORDED)
    skipped = skipped[-MAX_SKIPPED_RECORDED:]
    if remaining is not None and len(run) >= remaining:
        return DispatchPlan(run, skipped, expired, None, CompletedReason.MAX_RUNS, catchup)
    if slot is None:
        return DispatchPlan(run, skipped, expired, None, _exhausted_reason(timing), catchup)
    return DispatchPlan(run, skipped, expired, slot, None, catchup)


def _collect_missed(
    slots: Iterator[datetime], due_from: datetime
) -> tuple[list[datetime], int, datetime | None]:
    """The newest missed slots worth keeping, how many older ones overflowed, the first due slot."""
    kept: deque[datetime] = deque(maxlen=MAX_RUN_ALL + MAX_SKIPPED_RECORDED)
    overflow = 0
    slot = next(slots, None)
    while slot is not None and slot < due_from:
        if len(kept) == kept.maxlen:
            overflow += 1
        kept.append(slot)
        slot = next(slots, None)
    return list(kept), overflow, slot


def _apply_misfire(
    missed: list[datetime], policy: MisfirePolicy
) -> tuple[list[datetime], list[datetime]]:
    """Split the missed slots (ascending) into (run, skipped) by the misfire policy."""
    if not missed or policy == MisfirePolicy.SKIP:
        return [], missed
    if policy == MisfirePolicy.RUN_ONCE:
        return missed[-1:], missed[:-1]
    return missed[-MAX_RUN_ALL:], missed[:-MAX_RUN_ALL]


def _exhausted_reason(timing: Timing) -> CompletedReason:
    if timing.kind == ScheduleKind.ONCE:
        return CompletedReason.RAN_ONCE
    if timing.end_at is not None:
        return CompletedReason.END_REACHED
    return CompletedReason.NO_FURTHER_SLOT


def stopped_text(reason: str, parked_error: str | None = None) -> str:
    """Why a schedule stopped for good, as a person reads it (with dispatch's error when
    it was parked)."""
    return f"{reason} ({parked_error})" if parked_error else reason


def initial_next_run_at(
    timing: Timing, now: datetime
) -> tuple[datetime | None, CompletedReason | None]:
    """The first slot at or after ``now`` for a new, resumed or edited schedule.

    Resuming never replays the paused period. Returns (None, reason) if no slot can
    ever run any more.
    """
    slot = first_slot(timing, now)
    if slot is not None:
        return slot, None
    if timing.kind == ScheduleKind.ONCE:
        return None, CompletedReason.RUN_TIME_PASSED
    return None, _exhausted_reason(timing)


def decide_overlap(
    policy: OverlapPolicy,
    *,
    running: bool,
    waiting: bool,
    later_started: bool = False,
    backlog: bool = False,
    catchup: bool = False,
) -> OverlapDecision:
    """What to do with a slot due to start while other runs of its schedule may be running.

    `running`: another run holds a live lease; `waiting`: an earlier slot is due and
    still queued; `later_started`: a later slot has already started; `backlog`: an
    earlier catch-up run has not started yet; `catchup`: this slot is one (a missed
    slot run late by the misfire policy). With `skip` and `buffer_one` the slots of a
    schedule start in slot order: a slot that comes late (its message was lost and
    sent again) after a later one started never runs, and catch-up runs, released
    together, each wait for the previous one instead of being skipped; slots due
    meanwhile follow the policy as if the catch-up run were still running.
    """
    if policy == OverlapPolicy.ALLOW:
        return OverlapDecision.RUN
    if later_started:
        return OverlapDecision.SUPERSEDED
    if not (running or backlog):
        return OverlapDecision.RUN
    if catchup:
        return OverlapDecision.WAIT
    if policy == OverlapPolicy.SKIP or waiting:
        return OverlapDecision.SKIP
    return OverlapDecision.WAIT
