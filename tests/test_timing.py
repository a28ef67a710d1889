"""Tests of core.timing: parsing a ScheduleSpec into a Timing, its slots, counts and prose."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from core.errors import ValidationFailed
from core.limits import MIN_INTERVAL_S
from core.timing import (
    ScheduleSpec,
    count_slots,
    describe,
    first_slot,
    next_slot,
    parse_timing,
    preview,
    slots_between,
)
from core.vocabulary import ScheduleKind, one_of
from testkit.timing import (
    BERLIN,
    cron,
    cron_spec,
    errors_of,
    every,
    every_spec,
    hm,
    local,
    once,
    once_spec,
    utc,
)

# --- parsing: ScheduleSpec -> Timing --------------------------------------------------


def test_parse_timing_normalizes_resolves_and_converts_to_utc() -> None:
    # given a raw spec with a sloppy expression and instants in a local zone
    spec = ScheduleSpec(
        kind="cron",
        timezone=BERLIN,
        cron_expr="  0   9 * *\tmon-fri ",
        start_at=local(BERLIN, 2026, 1, 1, 9),
        end_at=local(BERLIN, 2026, 7, 1, 9),
        max_runs=3,
    )
    # when parsing it
    timing = parse_timing(spec)
    # then the timing holds the normalized expression, the zone and UTC instants
    assert timing.kind is ScheduleKind.CRON
    assert timing.cron_expr == "0 9 * * MON-FRI"
    assert timing.zone == ZoneInfo(BERLIN) and timing.timezone == BERLIN
    assert timing.start_at == utc(2026, 1, 1, 8) and timing.start_at.tzinfo is UTC
    assert timing.end_at == utc(2026, 7, 1, 7) and timing.end_at.tzinfo is UTC
    assert (timing.max_runs, timing.interval_s, timing.run_at) == (3, None, None)


def test_parse_timing_keeps_only_the_fields_of_its_kind() -> None:
    t = utc(2026, 1, 1)
    spec = ScheduleSpec(kind="once", cron_expr="* * * * *", interval_s=60, run_at=t)
    timing = parse_timing(spec)
    assert (timing.kind, timing.run_at, timing.cron_expr, timing.interval_s) == (
        ScheduleKind.ONCE,
        t,
        None,
        None,
    )
    interval = parse_timing(ScheduleSpec(kind="interval", interval_s=60, run_at=t, anchor=t))
    assert (interval.interval_s, interval.run_at, interval.anchor) == (60, None, t)


def test_interval_without_anchor_is_anchored_by_its_creator() -> None:
    # given an interval spec with neither start_at nor anchor: valid now
    t = utc(2026, 5, 1, 12, 0, 7)
    timing = parse_timing(ScheduleSpec(kind="interval", interval_s=60))
    assert timing.anchor is None
    # then asking its slots is a programming error until it is anchored
    with pytest.raises(ValueError, match="anchor"):
        preview(timing, t)
    with pytest.raises(ValueError, match="anchor"):
        first_slot(timing, t)
    with pytest.raises(ValueError, match="anchor"):
        list(slots_between(timing, t, t + timedelta(hours=1)))
    with pytest.raises(ValueError, match="anchor"):
        count_slots(timing, t, t + timedelta(hours=1))
    # and anchored at its creation it counts from there, in real seconds
    anchored = timing.anchored(t)
    assert anchored.anchor == t
    assert preview(anchored, t, 4) == [t + timedelta(seconds=60 * k) for k in range(4)]
    assert preview(anchored, t + timedelta(seconds=90), 2) == [
        t + timedelta(seconds=120),
        t + timedelta(seconds=180),
    ]
    # anchoring twice keeps the first anchor; start_at needs no anchor at all
    assert anchored.anchored(t + timedelta(days=1)) == anchored
    started = parse_timing(ScheduleSpec(kind="interval", interval_s=60, start_at=t))
    assert preview(started, utc(2026, 1, 1), 2) == [t, t + timedelta(seconds=60)]


def test_anchored_needs_an_aware_instant() -> None:
    timing = parse_timing(ScheduleSpec(kind="interval", interval_s=60))
    with pytest.raises(ValueError, match="aware"):
        timing.anchored(datetime(2026, 1, 1))


# --- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        (
            cron_spec("0 9 * * *", "Mars/Olympus"),
            "timezone",
            "unknown timezone 'Mars/Olympus'; use an IANA name such as Europe/Berlin",
        ),
        (
            every_spec(MIN_INTERVAL_S - 1, utc(2026, 1, 1)),
            "interval_s",
            f"must be at least {MIN_INTERVAL_S} seconds",
        ),
        (ScheduleSpec(kind="interval", anchor=utc(2026, 1, 1)), "interval_s", "is required"),
        (
            cron_spec("0 9 * * *", start_at=utc(2026, 2, 1), end_at=utc(2026, 1, 1)),
            "end_at",
            "must be after the start",
        ),
        (once_spec(datetime(2026, 5, 1, 9)), "run_at", "must include a timezone"),
        (
            cron_spec("* * * * *", start_at=datetime(2026, 5, 1)),
            "start_at",
            "must include a timezone",
        ),
        (
            every_spec(60, datetime(2026, 5, 1)),
            "anchor",
            "must include a timezone",
        ),
        (ScheduleSpec(kind="once"), "run_at", "is required for a one-time schedule"),
        (cron_spec("* * * * *", max_runs=0), "max_runs", "must be at least 1"),
        (
            ScheduleSpec(kind="weekly"),
            "kind",
            f"unknown kind 'weekly'; use one of {one_of(ScheduleKind)}",
        ),
        (cron_spec("  "), "cron_expr", "is required for a cron schedule"),
        (
            ScheduleSpec(kind="once", run_at=utc(2026, 1, 1), end_at=utc(2025, 1, 1)),
            "run_at",
            "must lie between the start and the end",
        ),
    ],
)
def test_each_bad_field_is_named(spec: ScheduleSpec, field: str, message: str) -> None:
    assert message in errors_of(spec)[field]


def test_minimum_interval_is_accepted() -> None:
    assert parse_timing(every_spec(MIN_INTERVAL_S, utc(2026, 1, 1))).interval_s == MIN_INTERVAL_S


def test_several_errors_are_reported_together() -> None:
    spec = cron_spec(
        "0 25 * * *", "Mars/Olympus", max_runs=0, start_at=utc(2026, 2, 1), end_at=utc(2026, 1, 1)
    )
    assert set(errors_of(spec)) == {"cron_expr", "timezone", "max_runs", "end_at"}


def test_slot_functions_validate_first() -> None:
    # slots are asked of a Timing only, and no Timing exists for an invalid spec
    with pytest.raises(ValidationFailed):
        preview(cron("0 25 * * *"), utc(2026, 1, 1))


# --- slot generation ----------------------------------------------------------------


def test_cron_next_slot_is_strictly_after_and_utc() -> None:
    # given a daily 09:00 schedule in Berlin (CET = UTC+1 in January)
    timing = cron("0 9 * * *", BERLIN)
    # when asking for the slot after exactly 08:00Z, and the first at/after it
    after = utc(2026, 1, 10, 8, 0)
    # then both are 08:00Z-or-later, strict vs inclusive, in UTC
    assert first_slot(timing, after) == utc(2026, 1, 10, 8, 0)
    assert next_slot(timing, after) == utc(2026, 1, 11, 8, 0)
    assert next_slot(timing, after).tzinfo is UTC  # type: ignore[union-attr]


def test_preview_returns_ten_slots_in_order() -> None:
    timing = cron("*/15 * * * *")
    slots = preview(timing, utc(2026, 5, 1, 10, 7))
    assert len(slots) == 10
    assert slots[0] == utc(2026, 5, 1, 10, 15)
    assert all(b - a == timedelta(minutes=15) for a, b in pairwise(slots))


def test_start_and_end_bound_slots_inclusively() -> None:
    # given an hourly schedule bounded to 10:00..13:00
    timing = cron("0 * * * *", start_at=utc(2026, 5, 1, 10), end_at=utc(2026, 5, 1, 13))
    # when listing the day
    slots = list(slots_between(timing, utc(2026, 5, 1), utc(2026, 5, 2)))
    # then start_at and end_at themselves are slots
    assert hm(slots) == ["05-01 10:00Z", "05-01 11:00Z", "05-01 12:00Z", "05-01 13:00Z"]
    assert next_slot(timing, utc(2026, 5, 1, 13)) is None


def test_slots_between_is_half_open() -> None:
    timing = cron("0 * * * *")
    slots = list(slots_between(timing, utc(2026, 5, 1, 10), utc(2026, 5, 1, 12)))
    assert slots == [utc(2026, 5, 1, 10), utc(2026, 5, 1, 11)]


def test_interval_slots_follow_anchor_in_real_time_across_dst() -> None:
    # given an hourly interval anchored at Berlin midnight on the spring-forward day
    anchor = local(BERLIN, 2026, 3, 29, 0, 0)
    timing = every(3600, anchor)
    # when listing four slots
    slots = preview(timing, anchor, 4)
    # then they are one real hour apart (not wall-clock hours)
    assert hm(slots) == ["03-28 23:00Z", "03-29 00:00Z", "03-29 01:00Z", "03-29 02:00Z"]


def test_interval_uses_start_at_over_anchor_and_never_before_it() -> None:
    timing = every(30, utc(2026, 1, 1), start_at=utc(2026, 5, 1, 12, 0, 10))
    assert first_slot(timing, utc(2026, 1, 1)) == utc(2026, 5, 1, 12, 0, 10)
    assert next_slot(timing, utc(2026, 5, 1, 12, 0, 10)) == utc(2026, 5, 1, 12, 0, 40)
    assert first_slot(timing, utc(2026, 5, 1, 12, 0, 41)) == utc(2026, 5, 1, 12, 1, 10)


def test_once_has_a_single_slot() -> None:
    timing = once(utc(2026, 7, 1, 9))
    assert preview(timing, utc(2026, 1, 1)) == [utc(2026, 7, 1, 9)]
    assert next_slot(timing, utc(2026, 7, 1, 9)) is None


def test_naive_argument_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_slot(cron("* * * * *"), datetime(2026, 1, 1))


# --- counting -------------------------------------------------------------------------


def test_count_slots_is_half_open_and_honours_bounds() -> None:
    # given an hourly cron bounded to 10:00..13:00 (both inclusive)
    bounded = cron("0 * * * *", start_at=utc(2026, 5, 1, 10), end_at=utc(2026, 5, 1, 13))
    day = (utc(2026, 5, 1), utc(2026, 5, 2))
    # then the count over a day equals the listed slots; [start, stop) excludes stop
    assert count_slots(bounded, *day) == len(list(slots_between(bounded, *day))) == 4
    assert count_slots(cron("0 * * * *"), utc(2026, 5, 1, 10), utc(2026, 5, 1, 12)) == 2
    assert count_slots(bounded, utc(2026, 5, 2), utc(2026, 5, 1)) == 0


def test_count_slots_of_intervals_and_once() -> None:
    timing = every(10, utc(2026, 1, 1))
    # [00:00:05, 00:01:05): 00:00:10 .. 00:01:00
    assert count_slots(timing, utc(2026, 1, 1, 0, 0, 5), utc(2026, 1, 1, 0, 1, 5)) == 6
    assert count_slots(timing, utc(2026, 1, 1), utc(2026, 1, 2)) == 8640
    assert count_slots(timing, utc(2025, 12, 31), utc(2026, 1, 1)) == 0  # before the anchor
    run_at = utc(2026, 7, 1, 9)
    assert count_slots(once(run_at), utc(2026, 1, 1), run_at) == 0
    assert count_slots(once(run_at), utc(2026, 1, 1), run_at + timedelta(microseconds=1)) == 1


# --- description ----------------------------------------------------------------------


def test_describe() -> None:
    assert describe(cron("0 9 * * 1-5", BERLIN)) == (
        "At 09:00 AM, Monday through Friday (Europe/Berlin)"
    )
    assert describe(cron("@weekly")) == "At 12:00 AM, only on Sunday (UTC)"
    assert describe(every(30, utc(2026, 1, 1))) == "Every 30 seconds"
    assert describe(every(300, utc(2026, 1, 1))) == "Every 5 minutes"
    assert describe(every(3600, utc(2026, 1, 1))) == "Every hour"
    assert describe(once(utc(2026, 12, 1, 8), BERLIN)) == "Once at 2026-12-01 09:00 CET"


def test_describe_refuses_what_cron_descriptor_would_misread() -> None:
    # "0 25 * * *" would read "At 13:00 PM": no Timing (so no description) exists for it
    with pytest.raises(ValidationFailed):
        describe(cron("0 25 * * *"))
