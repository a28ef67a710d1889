"""Backfill and pause notes: what a person asks of a schedule, checked before any write.

A backfill runs a schedule's past slots in a range `[start, end)` on request: the
range is checked once (`parse_range`), and `backfill_slots` lists its slots, at most
`MAX_BACKFILL_SLOTS`. Plain functions over plain values: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from core.errors import FieldError, ValidationFailed
from core.limits import MAX_BACKFILL_SLOTS, MAX_PAUSE_NOTE
from core.text import UNSTORABLE, storable
from core.timing import Timing, as_utc, count_slots, slots_between


def pause_note(note: str | None) -> str | None:
    """The note a schedule is paused with, trimmed; None when empty."""
    text = (note or "").strip()
    if not storable(text):
        raise ValidationFailed.single("note", UNSTORABLE)
    if len(text) > MAX_PAUSE_NOTE:
        raise ValidationFailed.single(
            "note", f"must be at most {MAX_PAUSE_NOTE} characters (got {len(text)})"
        )
    return text or None


@dataclass(frozen=True)
class BackfillRange:
    """A checked range of past time, UTC: build it with `parse_range`."""

    start: datetime
    end: datetime


def parse_range(
    start: datetime | None, end: datetime | None, *, now: datetime, retention_days: int
) -> BackfillRange:
    """`[start, end)` as a backfill may take it: both given with a zone, start before end,
    end not after now (later slots run on schedule), start within the retention period
    (older runs would be deleted, and their slots could be run again)."""
    errors = [*_given("from", start), *_given("to", end)]
    if errors:
        raise ValidationFailed(errors)
    assert start is not None and end is not None
    start, end = as_utc(start), as_utc(end)
    if end <= start:
        errors.append(FieldError("to", "must be after from"))
    if end > now:
        errors.append(
            FieldError("to", "must not be in the future: slots from now on run on schedule")
        )
    if start < now - timedelta(days=retention_days):
        errors.append(
            FieldError(
                "from",
                f"must be within the last {retention_days} days (older history is deleted)",
            )
        )
    if errors:
        raise ValidationFailed(errors)
    return BackfillRange(start, end)


def _given(field: str, value: datetime | None) -> list[FieldError]:
    if value is None:
        return [FieldError(field, "is required")]
    if value.utcoffset() is None:
        return [FieldError(field, "must include a timezone (got a naive datetime)")]
    return []


def slot_count(timing: Timing, span: BackfillRange) -> int:
    """How many slots of `timing` lie in the range (fast, for a preview)."""
    return count_slots(timing, span.start, span.end)


def backfill_slots(timing: Timing, span: BackfillRange) -> list[datetime]:
    """The slots of `timing` in the range, oldest first; ValidationFailed beyond the cap."""
    total = slot_count(timing, span)
    if total > MAX_BACKFILL_SLOTS:
        raise ValidationFailed.single(
            "to",
            f"this range holds {total} runs; a backfill makes at most {MAX_BACKFILL_SLOTS}: "
            "choose a shorter range",
        )
    return list(slots_between(timing, span.start, span.end))
