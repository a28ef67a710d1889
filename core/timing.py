"""A schedule's timing: parsed once into a `Timing`, then asked for its slots.

`parse_timing` validates what a person (or a row) gives and returns a `Timing`
whose cron expression is normalized, whose zone is resolved and whose instants are
UTC; every function below trusts it and re-validates nothing (as APScheduler 4's
triggers build their fields once in ``__init__``). Plain functions over plain
values: no I/O, no clock (callers pass ``now``). Every instant returned is an
aware UTC datetime. Cron rules across DST: `core.cron`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Protocol
from zoneinfo import ZoneInfo

from core.cron import TICK, count_cron, cron_slots, describe_cron, normalize_cron, take_before
from core.errors import FieldError, ValidationFailed
from core.limits import MIN_INTERVAL_S
from core.text import text_errors
from core.vocabulary import ScheduleKind, one_of


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule's timing as given (a form, a request, a row): not validated yet."""

    kind: str
    timezone: str = "UTC"
    cron_expr: str | None = None
    interval_s: int | None = None
    run_at: datetime | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None
    max_runs: int | None = None
    # Interval schedules without start_at count from here (their creation time).
    anchor: datetime | None = None


# A timing's fields as a person gives them (a request, a form, a file), in order: the
# anchor is never given, a stored schedule's is its creation.
TIMING_FIELDS = tuple(f.name for f in fields(ScheduleSpec) if f.name != "anchor")


class Stored(Protocol):
    """A stored schedule (the model, a list row): the timing's fields and its creation."""

    @property
    def created_at(self) -> datetime: ...


def spec_of(schedule: Stored) -> ScheduleSpec:
    """The timing of a stored schedule (anchored at its creation)."""
    given = {name: getattr(schedule, name) for name in TIMING_FIELDS}
    return ScheduleSpec(**given, anchor=schedule.created_at)


@dataclass(frozen=True)
class Timing:
    """A validated timing. Build it with `parse_timing`; its fields are trusted."""

    kind: ScheduleKind
    zone: ZoneInfo
    cron_expr: str | None  # normalized
    interval_s: int | None
    run_at: datetime | None  # UTC, like every instant here
    start_at: datetime | None
    end_at: datetime | None
    max_runs: int | None
    anchor: datetime | None

    @property
    def timezone(self) -> str:
        return self.zone.key

    def anchored(self, at: datetime) -> Timing:
        """This timing with `at` as its anchor when it has none (a schedule being created)."""
        return self if self.anchor is not None else replace(self, anchor=as_utc(at))


# --- parsing ------------------------------------------------------------------------


def parse_timing(spec: ScheduleSpec) -> Timing:
    """Validate `spec` once; raise ValidationFailed listing every problem (one FieldError each).

    An interval schedule without start_at or anchor counts from its creation: the
    command that creates it calls `Timing.anchored`, as does a preview.
    """
    text = [("kind", spec.kind), ("timezone", spec.timezone), ("cron_expr", spec.cron_expr)]
    if errors := text_errors(text):  # first: no other message quotes such text
        raise ValidationFailed(errors)
    errors = [*_check_common(spec), *_check_kind(spec)]
    if errors:
        raise ValidationFailed(errors)
    kind = ScheduleKind(spec.kind)
    return Timing(
        kind=kind,
        zone=ZoneInfo(spec.timezone),
        cron_expr=normalize_cron(spec.cron_expr or "") if kind == ScheduleKind.CRON else None,
        interval_s=spec.interval_s if kind == ScheduleKind.INTERVAL else None,
        run_at=_maybe_utc(spec.run_at) if kind == ScheduleKind.ONCE else None,
        start_at=_maybe_utc(spec.start_at),
        end_at=_maybe_utc(spec.end_at),
        max_runs=spec.max_runs,
        anchor=_maybe_utc(spec.anchor),
    )


_KINDS = frozenset(ScheduleKind)  # built once: dispatch parses every due schedule's timing


def _check_common(spec: ScheduleSpec) -> Iterator[FieldError]:
    if spec.kind not in _KINDS:
        yield FieldError("kind", f"unknown kind {spec.kind!r}; use one of {one_of(ScheduleKind)}")
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
        yield FieldError("end_at", "must be after the start")
    if spec.max_runs is not None and spec.max_runs < 1:
        yield FieldError("max_runs", "must be at least 1")


def _check_kind(spec: ScheduleSpec) -> Iterator[FieldError]:
    if spec.kind == ScheduleKind.CRON:
        if not (spec.cron_expr or "").strip():
            yield FieldError("cron_expr", "is required for a cron schedule")
        else:
            try:
                normalize_cron(spec.cron_expr or "")
            except ValidationFailed as exc:
                yield from exc.errors
    elif spec.kind == ScheduleKind.INTERVAL:
        if spec.interval_s is None:
            yield FieldError("interval_s", "is required for an interval schedule")
        elif spec.interval_s < MIN_INTERVAL_S:
            yield FieldError("interval_s", f"must be at least {MIN_INTERVAL_S} seconds")
    elif spec.kind == ScheduleKind.ONCE:
        yield from _check_once(spec)


def _check_once(spec: ScheduleSpec) -> Iterator[FieldError]:
    if spec.run_at is None:
        yield FieldError("run_at", "is required for a one-time schedule")
    elif _is_aware(spec.run_at) and not _within_bounds(spec, spec.run_at):
        yield FieldError("run_at", "must lie between the start and the end")


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


def as_utc(value: datetime | None) -> datetime:
    # Always compute in UTC: adding a timedelta to a zoneinfo datetime moves its
    # wall clock, not the instant, and is wrong across DST.
    if value is None or value.utcoffset() is None:
        raise ValueError(f"expected an aware datetime, got {value!r}")
    return value.astimezone(UTC)


def _maybe_utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


# --- description ------------------------------------------------------------------


def describe(timing: Timing) -> str:
    """A sentence for the dashboard, e.g. "At 09:00 AM, Monday through Friday (Europe/Berlin)"."""
    if timing.kind == ScheduleKind.CRON:
        return f"{describe_cron(timing.cron_expr or '')} ({timing.timezone})"
    if timing.kind == ScheduleKind.INTERVAL:
        return describe_interval(timing.interval_s or 0)
    local = as_utc(timing.run_at).astimezone(timing.zone)
    return f"Once at {local:%Y-%m-%d %H:%M %Z}"


def describe_interval(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"Every {unit}" if count == 1 else f"Every {count} {unit}s"
    return f"Every {seconds} seconds"


# --- slots ------------------------------------------------------------------------


def next_slot(timing: Timing, after: datetime) -> datetime | None:
    """The first slot strictly after ``after`` within start_at/end_at (max_runs is the caller's)."""
    return first_slot(timing, as_utc(after) + TICK)


def first_slot(timing: Timing, at_or_after: datetime) -> datetime | None:
    """The first slot at or after ``at_or_after`` within start_at/end_at, or None."""
    return next(slots_from(timing, as_utc(at_or_after)), None)


def slots_between(timing: Timing, start: datetime, end: datetime) -> Iterator[datetime]:
    """The slots in [start, end), ascending, computed lazily."""
    return take_before(slots_from(timing, as_utc(start)), as_utc(end))


def preview(timing: Timing, now: datetime, n: int = 10) -> list[datetime]:
    """The next ``n`` slots at or after ``now``."""
    return list(islice(slots_from(timing, as_utc(now)), n))


def slots_from(timing: Timing, at_or_after: datetime) -> Iterator[datetime]:
    """Slots at or after ``at_or_after`` (UTC), honouring start_at and end_at."""
    start = max(at_or_after, timing.start_at) if timing.start_at else at_or_after
    for slot in _unbounded(timing, start):
        if timing.end_at is not None and slot > timing.end_at:
            return
        yield slot


def _unbounded(timing: Timing, start: datetime) -> Iterator[datetime]:
    if timing.kind == ScheduleKind.CRON:
        return cron_slots(timing.cron_expr or "", timing.zone, start)
    if timing.kind == ScheduleKind.INTERVAL:
        return _interval_slots(_anchor(timing), timing.interval_s or 0, start)
    run_at = as_utc(timing.run_at)
    return iter([run_at] if run_at >= start else [])


def _anchor(timing: Timing) -> datetime:
    anchor = timing.start_at or timing.anchor
    if anchor is None:
        raise ValueError("an interval timing without start_at needs an anchor: call anchored()")
    return anchor


def _interval_slots(anchor: datetime, interval_s: int, start: datetime) -> Iterator[datetime]:
    k = _interval_index(anchor, interval_s, start)
    while True:
        yield anchor + timedelta(seconds=interval_s * k)
        k += 1


def _interval_index(anchor: datetime, interval_s: int, at: datetime) -> int:
    """The index k of the first slot anchor + k*interval_s at or after ``at`` (k >= 0)."""
    elapsed_us = (at - anchor) // TICK
    return max(0, -(-elapsed_us // (interval_s * 1_000_000)))


def count_slots(timing: Timing, start: datetime, stop: datetime) -> int:
    """How many slots lie in [start, stop), in time proportional to days, not slots."""
    if timing.start_at is not None:
        start = max(start, timing.start_at)
    if timing.end_at is not None:
        stop = min(stop, timing.end_at + TICK)
    if start >= stop:
        return 0
    if timing.kind == ScheduleKind.INTERVAL:
        first = _interval_index(_anchor(timing), timing.interval_s or 0, start)
        return _interval_index(_anchor(timing), timing.interval_s or 0, stop) - first
    if timing.kind == ScheduleKind.ONCE:
        return sum(1 for _ in take_before(_unbounded(timing, start), stop))
    return count_cron(timing.cron_expr or "", timing.zone, start, stop)
