"""Schedules: when their slots fall, what a dispatch tick runs, and how they read.

Plain functions over plain values: no I/O, no clock (callers pass ``now``). Every
instant returned is an aware UTC datetime. Cron expressions are evaluated in the
schedule's own timezone the way Debian cron treats DST changes:

- a fixed wall time that does not exist (spring forward) runs once, at the first
  instant after the gap;
- a fixed wall time that occurs twice (fall back) runs once, at its first occurrence;
- an expression whose minute or hour field starts with ``*`` (``*``, ``*/2``) runs
  at every real instant whose local wall time matches.

Slots come from cronsim (as in Healthchecks), which implements these rules. We
deliberately do not use croniter 7: it returns naive UTC unless given an aware
start, fires a fixed time inside the repeated fall-back hour twice, and reads
``59/15`` as minute 59 only. cronsim is not trusted blindly: for wildcard
expressions its own zone arithmetic misses slots after a 30-minute shift, so those
run on fixed offsets (see ``_wildcard_slots``); tests compare every slot with a
brute-force reference. cron-descriptor only describes: it validates nothing
(``0 25 * * *`` reads "At 13:00 PM") and knows no macros, so expressions are
normalized and validated here first.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from itertools import islice
from typing import Literal, NoReturn
from zoneinfo import ZoneInfo

from cron_descriptor import (  # type: ignore[import-untyped, unused-ignore]  # no py.typed
    ExpressionDescriptor,
    FormatError,
    MissingFieldError,
    Options,
    WrongArgumentError,
)
from cronsim import CronSim, CronSimError

from stepwise.errors import FieldError, ValidationFailed

KINDS = ("cron", "interval", "once")
MISFIRE_POLICIES = ("skip", "run_once", "run_all")
OVERLAP_POLICIES = ("skip", "buffer_one", "allow")
MIN_INTERVAL_S = 10
MAX_RUN_ALL = 100
MAX_SKIPPED_RECORDED = 100

_TICK = timedelta(microseconds=1)  # the resolution of datetime: "strictly after" = ">= t + tick"
_MAX_COUNT_STEPS = 100_000  # days walked when counting a backlog; ~270 years
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
)
_CRON_HELP = "minute hour day-of-month month day-of-week"


@dataclass(frozen=True)
class ScheduleSpec:
    kind: str
    timezone: str = "UTC"
    cron_expr: str | None = None
    interval_s: int | None = None
    run_at: datetime | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None
    max_runs: int | None = None
    anchor: datetime | None = None


@dataclass(frozen=True)
class DispatchPlan:
    run: list[datetime]
    skipped: list[datetime]
    expired: int
    next_run_at: datetime | None
    completed_reason: str | None


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


# --- validation -------------------------------------------------------------------


def normalize_cron(expr: str) -> str:
    """``expr`` stripped, whitespace collapsed, names upper-cased and macros expanded.

    Raises ValidationFailed (field "cron_expr") if it is not a standard 5-field
    expression cronsim accepts, or if it never matches.
    """
    text = " ".join(expr.split())
    if text.startswith("@"):
        return _expand_macro(text)
    fields = text.upper().split(" ") if text else []
    if len(fields) in (6, 7):
        only = f"only standard 5-field expressions ({_CRON_HELP}) are accepted"
        _reject(text, f"it has {len(fields)} fields; {only}")
    if len(fields) != 5:
        _reject(text, f"expected 5 fields ({_CRON_HELP}), got {len(fields)}")
    try:
        next(CronSim(" ".join(fields), datetime(2000, 1, 1, tzinfo=UTC)))
    except CronSimError as exc:
        _reject(text, _field_reason(str(exc), text.split(" ")))
    except StopIteration:
        _reject(text, "it never matches any date")
    except (ValueError, AssertionError):  # cronsim's own parser slips, not ours
        _reject(text, "it cannot be parsed")
    return " ".join(fields)


def _expand_macro(text: str) -> str:
    macro = _MACROS.get(text.lower())
    if macro is None:
        _reject(text, f"unknown macro; use one of {', '.join(_MACROS)}")
    return macro


def _reject(text: str, reason: str) -> NoReturn:
    raise ValidationFailed.single("cron_expr", f"{text!r} is not a valid cron expression: {reason}")


def _field_reason(message: str, fields: list[str]) -> str:
    """Turn cronsim's terse "Bad hour" into the value and range a person can fix."""
    for index, (name, low, high) in enumerate(_FIELDS):
        if message == f"Bad {name}":
            return _explain_field(name, low, high, fields[index], fields[3])
    return message


def _explain_field(name: str, low: int, high: int, text: str, months: str) -> str:
    for term in text.split(","):
        value, _, step = term.partition("/")
        if step == "0":
            return f"{name} step must be at least 1"
        for piece in re.split(r"[-#]", value.removesuffix("L")):
            if piece.isdigit() and not low <= int(piece) <= high:
                return f"{name} {int(piece)} is out of range {low}-{high}"
    if name == "day-of-month" and re.fullmatch(r"[\d,/-]+", text):
        return f"day-of-month {text!r} never occurs in month {months!r}"
    return f"{name} field {text!r} is not valid"


def validate_spec(spec: ScheduleSpec) -> None:
    """Raise ValidationFailed listing every problem of ``spec`` (one FieldError each)."""
    errors = [*_check_common(spec), *_check_kind(spec)]
    if errors:
        raise ValidationFailed(errors)


def _check_common(spec: ScheduleSpec) -> Iterator[FieldError]:
    if spec.kind not in KINDS:
        yield FieldError("kind", f"unknown kind {spec.kind!r}; use one of {', '.join(KINDS)}")
    if not _known_zone(spec.timezone):
        yield FieldError(
            "timezone",
            f"unknown timezone {spec.timezone!r}; use an IANA name such as Europe/Berlin",
        )
    for name in ("run_at", "start_at", "end_at", "anchor"):
        value = getattr(spec, name)
        if value is not None and not _is_aware(value):
            yield FieldError(name, "must include a timezone (got a naive datetime)")
    start, end = spec.start_at, spec.end_at
    if start and end and _is_aware(start) and _is_aware(end) and end <= start:
        yield FieldError("end_at", "must be after start_at")
    if spec.max_runs is not None and spec.max_runs < 1:
        yield FieldError("max_runs", "must be at least 1")


def _check_kind(spec: ScheduleSpec) -> Iterator[FieldError]:
    if spec.kind == "cron":
        if not (spec.cron_expr or "").strip():
            yield FieldError("cron_expr", "is required for a cron schedule")
        else:
            try:
                normalize_cron(spec.cron_expr or "")
            except ValidationFailed as exc:
                yield from exc.errors
    elif spec.kind == "interval":
        if spec.interval_s is None:
            yield FieldError("interval_s", "is required for an interval schedule")
        elif spec.interval_s < MIN_INTERVAL_S:
            yield FieldError("interval_s", f"must be at least {MIN_INTERVAL_S} seconds")
        if spec.start_at is None and spec.anchor is None:
            yield FieldError(
                "anchor", "is required when start_at is not set (use the creation time)"
            )
    elif spec.kind == "once":
        yield from _check_once(spec)


def _check_once(spec: ScheduleSpec) -> Iterator[FieldError]:
    if spec.run_at is None:
        yield FieldError("run_at", "is required for a one-time schedule")
    elif _is_aware(spec.run_at) and not _within_bounds(spec, spec.run_at):
        yield FieldError("run_at", "must lie between start_at and end_at")


def _within_bounds(spec: ScheduleSpec, at: datetime) -> bool:
    start, end = spec.start_at, spec.end_at
    after_start = start is None or not _is_aware(start) or at >= start
    return after_start and (end is None or not _is_aware(end) or at <= end)


def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (KeyError, ValueError, TypeError):  # ZoneInfoNotFoundError is a KeyError
        return False
    return True


def _is_aware(value: datetime | None) -> bool:
    return value is not None and value.utcoffset() is not None


# --- description ------------------------------------------------------------------


def describe(spec: ScheduleSpec) -> str:
    """A sentence for the dashboard, e.g. "At 09:00 AM, Monday through Friday (Europe/Berlin)"."""
    validate_spec(spec)
    if spec.kind == "cron":
        return f"{_describe_cron(normalize_cron(spec.cron_expr or ''))} ({spec.timezone})"
    if spec.kind == "interval":
        return _describe_interval(spec.interval_s or 0)
    local = _utc(spec.run_at).astimezone(ZoneInfo(spec.timezone))
    return f"Once at {local:%Y-%m-%d %H:%M %Z}"


def _describe_cron(expr: str) -> str:
    # A fixed locale: cron-descriptor otherwise follows the server's locale.
    options = Options(locale_code="en_US", use_24hour_time_format=False)
    try:
        return str(ExpressionDescriptor(expr, options).get_description())
    except (FormatError, MissingFieldError, WrongArgumentError, ValueError, IndexError):
        return f"Cron {expr}"  # the expression is valid (cronsim said so); only the prose failed


def _describe_interval(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"Every {unit}" if count == 1 else f"Every {count} {unit}s"
    return f"Every {seconds} seconds"


# --- slots ------------------------------------------------------------------------


def next_slot(spec: ScheduleSpec, after: datetime) -> datetime | None:
    """The first slot strictly after ``after`` within start_at/end_at (max_runs is the caller's)."""
    return first_slot(spec, _utc(after) + _TICK)


def first_slot(spec: ScheduleSpec, at_or_after: datetime) -> datetime | None:
    """The first slot at or after ``at_or_after`` within start_at/end_at, or None."""
    validate_spec(spec)
    return next(_slots(spec, _utc(at_or_after)), None)


def slots_between(spec: ScheduleSpec, start: datetime, end: datetime) -> Iterator[datetime]:
    """The slots in [start, end), ascending, computed lazily."""
    validate_spec(spec)
    stop = _utc(end)
    return iter(_take_before(_slots(spec, _utc(start)), stop))


def preview(spec: ScheduleSpec, now: datetime, n: int = 10) -> list[datetime]:
    """The next ``n`` slots at or after ``now``."""
    validate_spec(spec)
    return list(islice(_slots(spec, _utc(now)), n))


def _take_before(slots: Iterator[datetime], stop: datetime) -> Iterator[datetime]:
    for slot in slots:
        if slot >= stop:
            return
        yield slot


def _slots(spec: ScheduleSpec, at_or_after: datetime) -> Iterator[datetime]:
    """Slots of a validated spec at or after ``at_or_after`` (UTC), honouring start/end."""
    start = max(at_or_after, _utc(spec.start_at)) if spec.start_at else at_or_after
    for slot in _unbounded(spec, start):
        if spec.end_at is not None and slot > spec.end_at:
            return
        yield slot


def _unbounded(spec: ScheduleSpec, start: datetime) -> Iterator[datetime]:
    if spec.kind == "cron":
        return _cron_slots(normalize_cron(spec.cron_expr or ""), ZoneInfo(spec.timezone), start)
    if spec.kind == "interval":
        return _interval_slots(_anchor(spec), spec.interval_s or 0, start)
    run_at = _utc(spec.run_at)
    return iter([run_at] if run_at >= start else [])


def _anchor(spec: ScheduleSpec) -> datetime:
    return _utc(spec.start_at or spec.anchor)


def _interval_slots(anchor: datetime, interval_s: int, start: datetime) -> Iterator[datetime]:
    k = _interval_index(anchor, interval_s, start)
    while True:
        yield anchor + timedelta(seconds=interval_s * k)
        k += 1


def _interval_index(anchor: datetime, interval_s: int, at: datetime) -> int:
    """The index k of the first slot anchor + k*interval_s at or after ``at`` (k >= 0)."""
    elapsed_us = (at - anchor) // _TICK
    return max(0, -(-elapsed_us // (interval_s * 1_000_000)))


def _cron_slots(expr: str, zone: ZoneInfo, start: datetime) -> Iterator[datetime]:
    """Slots of a normalized expression at or after ``start`` (UTC), ascending."""
    if _is_fixed(expr):
        return _fixed_time_slots(expr, zone, start)
    return _wildcard_slots(expr, zone, start)


def _is_fixed(expr: str) -> bool:
    """Debian cron's "fixed time" job: neither minute nor hour starts with ``*``."""
    minute, hour = expr.split(" ")[:2]
    return not (minute.startswith("*") or hour.startswith("*"))


def _fixed_time_slots(expr: str, zone: ZoneInfo, start: datetime) -> Iterator[datetime]:
    # cronsim walks fixed times in naive wall time and maps each to its first
    # occurrence (or to the end of a gap): exactly the Debian rule. It yields instants
    # after its start truncated to the second; slots are whole seconds, so starting
    # one tick early yields exactly the slots >= start.
    previous = start - _TICK
    for local in CronSim(expr, previous.astimezone(zone)):
        slot = local.astimezone(UTC)
        # Walking naive wall time, a start in the second pass of a repeated hour
        # yields that hour's first pass again: an instant before `start`.
        if slot > previous:
            previous = slot
            yield slot


def _wildcard_slots(expr: str, zone: ZoneInfo, start: datetime) -> Iterator[datetime]:
    # Not cronsim's own zone arithmetic: it steps hours by 3600 s of real time and so
    # skips e.g. 02:00 after Lord Howe's 30-minute fall back ("0 */2 * * *"; cronsim
    # 2.8). Between two offset changes the wall clock is UTC plus a fixed offset, so
    # cronsim runs on that fixed offset, restarting at each change.
    cursor = start
    while True:
        offset = _offset(zone, cursor)
        for local in CronSim(expr, (cursor - _TICK).astimezone(timezone(offset))):
            slot = local.astimezone(UTC)
            change = _first_change(zone, cursor, slot, offset)
            if change is not None:
                cursor = change
                break
            yield slot
            cursor = slot
        else:
            return


def _offset(zone: ZoneInfo, instant: datetime) -> timedelta:
    return instant.astimezone(zone).utcoffset() or timedelta(0)


def _first_change(zone: ZoneInfo, lo: datetime, hi: datetime, offset: timedelta) -> datetime | None:
    """The first instant in (lo, hi] whose UTC offset is not ``offset``, if any."""
    # Probing once a day assumes no zone changes offset twice within a day.
    while lo < hi:
        probe = min(lo + timedelta(days=1), hi)
        if _offset(zone, probe) != offset:
            return _bisect_change(zone, lo, probe, offset)
        lo = probe
    return None


def _bisect_change(zone: ZoneInfo, lo: datetime, hi: datetime, offset: timedelta) -> datetime:
    # Offsets change on whole seconds; bisecting whole seconds lands exactly on it.
    second = timedelta(seconds=1)
    lo, hi = lo.replace(microsecond=0), hi.replace(microsecond=0) + second * bool(hi.microsecond)
    while hi - lo > second:
        mid = lo + (hi - lo) // second // 2 * second
        lo, hi = (mid, hi) if _offset(zone, mid) == offset else (lo, mid)
    return hi


def _utc(value: datetime | None) -> datetime:
    # Always compute in UTC: adding a timedelta to a zoneinfo datetime moves its
    # wall clock, not the instant, and is wrong across DST.
    if value is None or value.utcoffset() is None:
        raise ValueError(f"expected an aware datetime, got {value!r}")
    return value.astimezone(UTC)


# --- counting a backlog without walking it ----------------------------------------


def _count_slots(spec: ScheduleSpec, start: datetime, stop: datetime) -> int:
    """How many slots lie in [start, stop), in time proportional to days, not slots."""
    if spec.start_at is not None:
        start = max(start, _utc(spec.start_at))
    if spec.end_at is not None:
        stop = min(stop, _utc(spec.end_at) + _TICK)
    if start >= stop:
        return 0
    if spec.kind == "interval":
        first = _interval_index(_anchor(spec), spec.interval_s or 0, start)
        return _interval_index(_anchor(spec), spec.interval_s or 0, stop) - first
    if spec.kind == "once":
        return sum(1 for _ in _take_before(_unbounded(spec, start), stop))
    return _count_cron(normalize_cron(spec.cron_expr or ""), ZoneInfo(spec.timezone), start, stop)


def _count_cron(expr: str, zone: ZoneInfo, start: datetime, stop: datetime) -> int:
    # A matching local day without any UTC-offset change holds the same number of
    # slots as any other such day, so walk one of them and multiply; walk only the
    # partial and the DST days. A year of every-minute slots costs ~365 cronsim calls.
    count, per_day, cursor = 0, None, start
    for _ in range(_MAX_COUNT_STEPS):
        slot = next(_cron_slots(expr, zone, cursor), None)
        if slot is None or slot >= stop:
            break
        day_start, day_end = _local_day(slot, zone)
        whole = cursor <= day_start <= slot and day_end <= stop and _is_plain_day(day_start, zone)
        if whole and per_day is not None:
            count += per_day
        else:
            walked = sum(
                1 for _ in _take_before(_cron_slots(expr, zone, cursor), min(day_end, stop))
            )
            per_day = walked if whole else per_day
            count += walked
        cursor = day_end
    return count


def _local_day(instant: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    day = instant.astimezone(zone).date()
    return _midnight(day, zone), _midnight(day + timedelta(days=1), zone)


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def _is_plain_day(day_start: datetime, zone: ZoneInfo) -> bool:
    """No offset change on this day nor the one before (a gap there may push slots here)."""
    instants = [day_start + timedelta(days=offset) for offset in (-1, 0, 1)]
    offsets = {instant.astimezone(zone).utcoffset() for instant in instants}
    return len(offsets) == 1 and _midnight(day_start.astimezone(zone).date(), zone) == day_start


# --- dispatch ---------------------------------------------------------------------


def plan_dispatch(
    spec: ScheduleSpec,
    *,
    next_run_at: datetime,
    now: datetime,
    horizon: timedelta,
    grace: timedelta,
    misfire_policy: str,
    catchup_window_s: int,
    dispatched: int,
) -> DispatchPlan:
    """Which slots from ``next_run_at`` up to ``now + horizon`` run, are skipped or expire.

    Slots at or after ``now - grace`` are due and run (possibly later: the caller
    delays them). Older ones were missed: those before the catch-up window are only
    counted, the rest follow ``misfire_policy``. Only slots that run count towards
    max_runs (together with ``dispatched``).
    """
    validate_spec(spec)
    if misfire_policy not in MISFIRE_POLICIES:
        raise ValidationFailed.single("misfire_policy", f"use one of {', '.join(MISFIRE_POLICIES)}")
    now, due_from = _utc(now), _utc(now) - grace
    remaining = None if spec.max_runs is None else spec.max_runs - dispatched
    if remaining is not None and remaining <= 0:
        return DispatchPlan([], [], 0, None, "max_runs reached")
    # Slots before the window (or before due_from, if grace exceeds the window) expire.
    expire_before = min(due_from, now - timedelta(seconds=catchup_window_s))
    cursor, expired = _utc(next_run_at), 0
    if cursor < expire_before:
        expired, cursor = _count_slots(spec, cursor, expire_before), expire_before
    slots = _slots(spec, cursor)
    missed, overflow, slot = _collect_missed(slots, due_from)
    run, skipped = _apply_misfire(missed, misfire_policy)
    run = run[:remaining]
    while slot is not None and slot < now + horizon and (remaining is None or len(run) < remaining):
        run.append(slot)
        slot = next(slots, None)
    expired += overflow + max(0, len(skipped) - MAX_SKIPPED_RECORDED)
    skipped = skipped[-MAX_SKIPPED_RECORDED:]
    if remaining is not None and len(run) >= remaining:
        return DispatchPlan(run, skipped, expired, None, "max_runs reached")
    if slot is None:
        return DispatchPlan(run, skipped, expired, None, _exhausted_reason(spec))
    return DispatchPlan(run, skipped, expired, slot, None)


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


def _apply_misfire(missed: list[datetime], policy: str) -> tuple[list[datetime], list[datetime]]:
    """Split the missed slots (ascending) into (run, skipped) by the misfire policy."""
    if not missed or policy == "skip":
        return [], missed
    if policy == "run_once":
        return missed[-1:], missed[:-1]
    return missed[-MAX_RUN_ALL:], missed[:-MAX_RUN_ALL]


def _exhausted_reason(spec: ScheduleSpec) -> str:
    if spec.kind == "once":
        return "ran once"
    return "end_at reached" if spec.end_at is not None else "no further slot"


def initial_next_run_at(spec: ScheduleSpec, now: datetime) -> tuple[datetime | None, str | None]:
    """The first slot at or after ``now`` for a new, resumed or edited schedule.

    Resuming never replays the paused period. Returns (None, reason) if no slot can
    ever run any more.
    """
    slot = first_slot(spec, now)
    if slot is not None:
        return slot, None
    if spec.kind == "once":
        return None, "run_at has passed"
    return None, _exhausted_reason(spec)


def decide_overlap(policy: str, *, running: bool, waiting: bool) -> Literal["run", "skip", "wait"]:
    """What to do with a run that is due while another run of the schedule may be running."""
    if policy not in OVERLAP_POLICIES:
        raise ValidationFailed.single("overlap_policy", f"use one of {', '.join(OVERLAP_POLICIES)}")
    if policy == "allow" or not running:
        return "run"
    if policy == "skip" or waiting:
        return "skip"
    return "wait"
