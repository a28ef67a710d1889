"""Cron expressions: validated once, walked across DST the way Debian cron does, described.

Evaluated in the schedule's own zone:

- a fixed wall time that does not exist (spring forward) runs once, at the first
  instant after the gap;
- a fixed wall time that occurs twice (fall back) runs once, at its first occurrence;
- an expression whose minute or hour field starts with ``*`` (``*``, ``*/2``) runs
  at every real instant whose local wall time matches.

Slots come from cronsim (as in Healthchecks), which implements these rules. We
deliberately do not use croniter 7 for slots: it returns naive UTC unless given an
aware start, fires a fixed time inside the repeated fall-back hour twice, and reads
``59/15`` as minute 59 only (it serves the tests as a second oracle on days without
a DST change). cronsim is not trusted blindly: for wildcard expressions its own zone
arithmetic misses slots after a 30-minute shift, so those run on fixed offsets (see
``_wildcard_slots``); tests compare every slot with a brute-force reference.
cron-descriptor only describes: it validates nothing (``0 25 * * *`` reads "At 13:00
PM") and knows no macros, so expressions are normalized and validated here first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import NoReturn
from zoneinfo import ZoneInfo

from cron_descriptor import (  # type: ignore[import-untyped, unused-ignore]  # no py.typed
    ExpressionDescriptor,
    FormatError,
    MissingFieldError,
    Options,
    WrongArgumentError,
)
from cronsim import CronSim, CronSimError

from core.errors import ValidationFailed

TICK = timedelta(microseconds=1)  # the resolution of datetime: "strictly after" = ">= t + tick"
_MAX_COUNT_STEPS = 100_000  # days walked when counting a backlog; ~270 years
MACROS = {
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
    macro = MACROS.get(text.lower())
    if macro is None:
        _reject(text, f"unknown macro; use one of {', '.join(MACROS)}")
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


def describe_cron(expr: str) -> str:
    """A normalized expression in words, e.g. "At 09:00 AM, Monday through Friday"."""
    # A fixed locale: cron-descriptor otherwise follows the server's locale.
    options = Options(locale_code="en_US", use_24hour_time_format=False)
    try:
        return str(ExpressionDescriptor(expr, options).get_description())
    except (FormatError, MissingFieldError, WrongArgumentError, ValueError, IndexError):
        return f"Cron {expr}"  # the expression is valid (cronsim said so); only the prose failed


# --- slots ------------------------------------------------------------------------


def cron_slots(expr: str, zone: ZoneInfo, start: datetime) -> Iterator[datetime]:
    """Slots of a normalized expression at or after ``start`` (UTC), ascending."""
    if _is_fixed(expr):
        return _fixed_time_slots(expr, zone, start)
    return _wildcard_slots(expr, zone, start)


def take_before(slots: Iterator[datetime], stop: datetime) -> Iterator[datetime]:
    for slot in slots:
        if slot >= stop:
            return
        yield slot


def _is_fixed(expr: str) -> bool:
    """Debian cron's "fixed time" job: neither minute nor hour starts with ``*``."""
    minute, hour = expr.split(" ")[:2]
    return not (minute.startswith("*") or hour.startswith("*"))


def _fixed_time_slots(expr: str, zone: ZoneInfo, start: datetime) -> Iterator[datetime]:
    # cronsim walks fixed times in naive wall time and maps each to its first
    # occurrence (or to the end of a gap): exactly the Debian rule. It yields instants
    # after its start truncated to the second; slots are whole seconds, so starting
    # one tick early yields exactly the slots >= start.
    previous = start - TICK
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
        for local in CronSim(expr, (cursor - TICK).astimezone(timezone(offset))):
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


# --- counting a backlog without walking it ----------------------------------------


def count_cron(expr: str, zone: ZoneInfo, start: datetime, stop: datetime) -> int:
    """How many slots lie in [start, stop), in time proportional to days, not slots."""
    # A matching local day without any UTC-offset change holds the same number of
    # slots as any other such day, so walk one of them and multiply; walk only the
    # partial and the DST days. A year of every-minute slots costs ~365 cronsim calls.
    count, per_day, cursor = 0, None, start
    for _ in range(_MAX_COUNT_STEPS):
        slot = next(cron_slots(expr, zone, cursor), None)
        if slot is None or slot >= stop:
            break
        day_start, day_end = _local_day(slot, zone)
        whole = cursor <= day_start <= slot and day_end <= stop and _is_plain_day(day_start, zone)
        if whole and per_day is not None:
            count += per_day
        else:
            walked = sum(1 for _ in take_before(cron_slots(expr, zone, cursor), min(day_end, stop)))
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
