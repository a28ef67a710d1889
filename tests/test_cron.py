"""Tests of core.cron: validation, macros, DST rules, and two oracles for the slots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.cron import MACROS, normalize_cron
from core.errors import ValidationFailed
from core.schedule import plan_dispatch
from core.timing import ScheduleSpec, count_slots, next_slot, parse_timing, preview, slots_between
from core.vocabulary import MisfirePolicy
from testkit.timing import (
    BERLIN,
    LORD_HOWE,
    MINUTE,
    NY,
    cron,
    cron_spec,
    errors_of,
    hm,
    local,
    utc,
)

# --- normalizing and validating -------------------------------------------------------


@pytest.mark.parametrize(
    ("macro", "expanded"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@HOURLY", "0 * * * *"),
    ],
)
def test_macros_expand(macro: str, expanded: str) -> None:
    assert normalize_cron(f"  {macro} ") == expanded
    assert MACROS[macro.lower()] == expanded


def test_weekly_macro_runs_on_sundays() -> None:
    slots = preview(cron("@weekly", NY), utc(2026, 6, 1), 2)
    assert slots == [utc(2026, 6, 7, 4), utc(2026, 6, 14, 4)]  # midnight EDT


def test_normalize_collapses_whitespace_and_uppercases_names() -> None:
    assert normalize_cron("  0   9 * *\tmon-fri ") == "0 9 * * MON-FRI"


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("0 25 * * *", "hour 25 is out of range 0-23"),
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
        ("0 0 * 13 *", "month 13 is out of range 1-12"),
        ("0 0 * * 9", "day-of-week 9 is out of range 0-7"),
        ("*/0 * * * *", "minute step must be at least 1"),
        ("0 0 30 2 *", "day-of-month '30' never occurs in month '2'"),
        ("* * *", "expected 5 fields"),
        ("0 0 * * * *", "it has 6 fields; only standard 5-field expressions"),
        ("0 0 0 * * * 2026", "it has 7 fields"),
        ("? * * * *", "minute field '?' is not valid"),
        ("@reboot", "unknown macro"),
    ],
)
def test_bad_cron_is_rejected_with_a_reason(expr: str, reason: str) -> None:
    errors = errors_of(cron_spec(expr))
    assert errors["cron_expr"].startswith(f"'{expr}' is not a valid cron expression: ")
    assert reason in errors["cron_expr"]
    # normalize_cron itself says the same
    with pytest.raises(ValidationFailed) as caught:
        normalize_cron(expr)
    assert caught.value.for_field("cron_expr") == errors["cron_expr"]


def test_weekly_macro_is_valid() -> None:
    assert parse_timing(cron_spec("@weekly", BERLIN)).cron_expr == "0 0 * * 0"


@given(st.text(alphabet="0123456789*/-,#LW? @", max_size=24))
def test_normalize_cron_never_crashes(expr: str) -> None:
    try:
        normalized = normalize_cron(expr)
    except ValidationFailed as exc:
        assert [e.field for e in exc.errors] == ["cron_expr"]
    else:
        assert len(normalized.split(" ")) == 5


# --- DST: exact instants --------------------------------------------------------------

DST_CASES = [
    # New York spring forward 2026-03-08 02:00 EST -> 03:00 EDT
    (NY, "30 2 * * *", (2026, 3, 8), ["03-08 07:00Z"]),
    (NY, "0 * * * *", (2026, 3, 8), ["03-08 05:00Z", "03-08 06:00Z", "03-08 07:00Z"]),
    (
        NY,
        "*/30 * * * *",
        (2026, 3, 8),
        ["03-08 05:00Z", "03-08 05:30Z", "03-08 06:00Z", "03-08 06:30Z", "03-08 07:00Z"],
    ),
    # New York fall back 2026-11-01 02:00 EDT -> 01:00 EST: 01:xx happens twice
    (NY, "30 1 * * *", (2026, 11, 1), ["11-01 05:30Z"]),
    (NY, "30 2 * * *", (2026, 11, 1), ["11-01 07:30Z"]),
    (
        NY,
        "0 * * * *",
        (2026, 11, 1),
        ["11-01 04:00Z", "11-01 05:00Z", "11-01 06:00Z", "11-01 07:00Z", "11-01 08:00Z"],
    ),
    (
        NY,
        "*/30 * * * *",
        (2026, 11, 1),
        [
            "11-01 04:00Z",
            "11-01 04:30Z",
            "11-01 05:00Z",
            "11-01 05:30Z",
            "11-01 06:00Z",
            "11-01 06:30Z",
            "11-01 07:00Z",
            "11-01 07:30Z",
            "11-01 08:00Z",
        ],
    ),
    # Berlin spring forward 2026-03-29 02:00 CET -> 03:00 CEST
    (BERLIN, "30 2 * * *", (2026, 3, 29), ["03-29 01:00Z"]),
    (BERLIN, "0 * * * *", (2026, 3, 29), ["03-28 23:00Z", "03-29 00:00Z", "03-29 01:00Z"]),
    # Berlin fall back 2026-10-25 03:00 CEST -> 02:00 CET: 02:xx happens twice
    (BERLIN, "30 2 * * *", (2026, 10, 25), ["10-25 00:30Z"]),
    (
        BERLIN,
        "0 * * * *",
        (2026, 10, 25),
        ["10-24 22:00Z", "10-24 23:00Z", "10-25 00:00Z", "10-25 01:00Z", "10-25 02:00Z"],
    ),
    (
        BERLIN,
        "*/30 * * * *",
        (2026, 10, 25),
        [
            "10-24 22:00Z",
            "10-24 22:30Z",
            "10-24 23:00Z",
            "10-24 23:30Z",
            "10-25 00:00Z",
            "10-25 00:30Z",
            "10-25 01:00Z",
            "10-25 01:30Z",
            "10-25 02:00Z",
        ],
    ),
    # Lord Howe fall back 2026-04-05 02:00 +11 -> 01:30 +10:30: 01:30-01:59 twice
    (LORD_HOWE, "45 1 * * *", (2026, 4, 5), ["04-04 14:45Z"]),
    (
        LORD_HOWE,
        "0 * * * *",
        (2026, 4, 5),
        ["04-04 13:00Z", "04-04 14:00Z", "04-04 15:30Z", "04-04 16:30Z"],
    ),
    (
        LORD_HOWE,
        "*/30 * * * *",
        (2026, 4, 5),
        [
            "04-04 13:00Z",
            "04-04 13:30Z",
            "04-04 14:00Z",
            "04-04 14:30Z",
            "04-04 15:00Z",
            "04-04 15:30Z",
            "04-04 16:00Z",
            "04-04 16:30Z",
        ],
    ),
    # Lord Howe spring forward 2026-10-04 02:00 +10:30 -> 02:30 +11: 02:00-02:29 missing
    (LORD_HOWE, "15 2 * * *", (2026, 10, 4), ["10-03 15:30Z"]),
    (LORD_HOWE, "30 2 * * *", (2026, 10, 4), ["10-03 15:30Z"]),
    (LORD_HOWE, "0 * * * *", (2026, 10, 4), ["10-03 13:30Z", "10-03 14:30Z", "10-03 16:00Z"]),
    (
        LORD_HOWE,
        "*/30 * * * *",
        (2026, 10, 4),
        [
            "10-03 13:30Z",
            "10-03 14:00Z",
            "10-03 14:30Z",
            "10-03 15:00Z",
            "10-03 15:30Z",
            "10-03 16:00Z",
        ],
    ),
]


@pytest.mark.parametrize(("zone", "expr", "day", "expected"), DST_CASES)
def test_dst_transitions_pin_exact_utc_instants(
    zone: str, expr: str, day: tuple[int, int, int], expected: list[str]
) -> None:
    # given a schedule in a zone on its transition day
    timing = cron(expr, zone)
    # when listing the slots between local midnight and local 03:01 (both exist once)
    start, end = local(zone, *day, 0, 0), local(zone, *day, 3, 1)
    # then exactly the Debian-cron instants come out
    assert hm(list(slots_between(timing, start, end))) == expected


def test_fall_back_fixed_time_runs_once_even_when_asked_from_the_second_pass() -> None:
    # given 01:30 daily in New York; `after` is 01:10 EST, i.e. the repeated hour's second pass
    timing = cron("30 1 * * *", NY)
    after = utc(2026, 11, 1, 6, 10)
    # then the next slot is tomorrow, never the already-passed first 01:30 (05:30Z)
    assert next_slot(timing, after) == utc(2026, 11, 2, 6, 30)


def test_wildcard_search_across_a_distant_dst_change_uses_the_new_offset() -> None:
    # given a wildcard expression matching only on Berlin's spring-forward day, and an
    # `after` with microseconds two days earlier (the offset change lies in between)
    timing = cron("* 12 29 3 *", BERLIN)
    after = utc(2026, 3, 27, 1, 30) + timedelta(microseconds=500_000)
    # then the first slot is 12:00 CEST (10:00Z), not 12:00 CET
    assert next_slot(timing, after) == utc(2026, 3, 29, 10, 0)


# --- DST: brute-force reference -------------------------------------------------------


def _values(field: str, low: int, high: int) -> set[int]:
    out: set[int] = set()
    for term in field.split(","):
        body, _, step = term.partition("/")
        if body == "*":
            first, last = low, high
        elif "-" in body:
            first, last = (int(x) for x in body.split("-"))
        else:
            first = last = int(body)
        out.update(range(first, last + 1, int(step or 1)))
    return out


def _matcher(expr: str):  # type: ignore[no-untyped-def]
    minute, hour, dom, month, dow = expr.split()
    minutes, hours = _values(minute, 0, 59), _values(hour, 0, 23)
    days, months = _values(dom, 1, 31), _values(month, 1, 12)
    weekdays = {d % 7 for d in _values(dow, 0, 7)}
    either = not (dom.startswith("*") or dow.startswith("*"))  # Debian: both restricted = OR

    def matches(wall: datetime) -> bool:
        day_hits = (wall.day in days, (wall.weekday() + 1) % 7 in weekdays)
        day_ok = any(day_hits) if either else all(day_hits)
        return wall.minute in minutes and wall.hour in hours and wall.month in months and day_ok

    return matches


def reference_slots(expr: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    """Walk every UTC minute and apply Debian cron's DST rules to its local wall time."""
    tz, matches = ZoneInfo(zone), _matcher(expr)
    fixed = not (expr.split()[0].startswith("*") or expr.split()[1].startswith("*"))
    u = start.astimezone(UTC).replace(second=0, microsecond=0)
    u += MINUTE if u < start else timedelta(0)

    def wall(instant: datetime) -> datetime:
        return instant.astimezone(tz).replace(tzinfo=None)

    previous, out = wall(u - MINUTE), []
    while u < end:
        w = wall(u)
        if not fixed:
            hit = matches(w)
        else:
            first_pass = w.replace(tzinfo=tz, fold=0).astimezone(UTC) == u
            skipped = [previous + MINUTE * k for k in range(1, (w - previous) // MINUTE)]
            hit = (matches(w) and first_pass) or any(matches(s) for s in skipped)
        if hit:
            out.append(u)
        previous, u = w, u + MINUTE
    return out


TRANSITIONS = {
    NY: [(2026, 3, 8), (2026, 11, 1)],
    BERLIN: [(2026, 3, 29), (2026, 10, 25)],
    LORD_HOWE: [(2026, 4, 5), (2026, 10, 4)],
}
expressions = st.builds(
    lambda m, h, dom, dow: f"{m} {h} {dom} * {dow}",
    st.sampled_from(["0", "30", "15,45", "*/15", "*/20", "*/30", "*", "0-10/5", "20-40/10", "59"]),
    st.sampled_from(["*", "*/2", "*/3", "1", "2", "3", "1-3", "0,2", "*/6", "2-3", "22-23,0"]),
    st.sampled_from(["*", "1-15", "25,31"]),
    st.sampled_from(["*", "0", "1-5", "6,7"]),
)
windows = st.builds(
    lambda zone, index, hours, seconds, length: (
        zone,
        local(zone, *TRANSITIONS[zone][index]).astimezone(UTC)
        + timedelta(hours=hours, seconds=seconds),
        timedelta(hours=length),
    ),
    st.sampled_from(sorted(TRANSITIONS)),
    st.integers(0, 1),
    st.integers(-8, 20),
    st.integers(0, 59),
    st.integers(1, 30),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions, windows)
def test_slots_match_brute_force_reference(
    expr: str, window: tuple[str, datetime, timedelta]
) -> None:
    zone, start, length = window
    got = list(slots_between(cron(expr, zone), start, start + length))
    assert got == reference_slots(expr, zone, start, start + length)


@settings(max_examples=60, deadline=None)
@given(expressions, windows, st.integers(0, 40))
def test_backlog_count_equals_slot_walk(
    expr: str, window: tuple[str, datetime, timedelta], days: int
) -> None:
    # given a schedule whose next_run_at lies `days` (+ some hours) before now, across DST
    zone, start, length = window
    now = start + length + timedelta(days=days)
    timing = cron(expr, zone)
    # when everything missed expires (window 0, skip)
    plan = plan_dispatch(
        timing,
        next_run_at=start,
        now=now,
        horizon=timedelta(0),
        grace=timedelta(0),
        misfire_policy=MisfirePolicy.SKIP,
        catchup_window_s=0,
        dispatched=0,
    )
    # then the fast count equals walking every slot
    walked = sum(1 for _ in slots_between(timing, start, now))
    assert plan.expired == walked
    assert plan.run == [] and plan.skipped == []
    assert count_slots(timing, start, now) == walked


# --- croniter: a second oracle, on days without DST -----------------------------------


def _cron_field(low: int, high: int) -> st.SearchStrategy[str]:
    """A simple cron field: ``*``, a number, a range, or ``*``/a range with a step.

    A range has two different ends: croniter 7 reads ``5-5`` as ``*`` (Debian: 5 only).
    """
    number = st.integers(low, high).map(str)
    span = st.lists(st.integers(low, high), min_size=2, max_size=2, unique=True).map(
        lambda ends: f"{min(ends)}-{max(ends)}"
    )
    step = st.integers(1, high - low + 1)
    stepped = st.tuples(st.one_of(st.just("*"), span), step).map(lambda bs: f"{bs[0]}/{bs[1]}")
    return st.one_of(st.just("*"), number, span, stepped)


# One of the two day fields is "*": with both restricted croniter and Debian cron disagree.
_days = st.one_of(
    st.tuples(_cron_field(1, 31), st.just("*")),
    st.tuples(st.just("*"), _cron_field(0, 6)),
)
simple_expressions = st.builds(
    lambda minute, hour, days, month: f"{minute} {hour} {days[0]} {month} {days[1]}",
    _cron_field(0, 59),
    _cron_field(0, 23),
    _days,
    _cron_field(1, 12),
)
utc_starts = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 12, 31)).map(
    lambda naive: naive.replace(microsecond=0, tzinfo=UTC)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(simple_expressions, utc_starts, st.booleans())
def test_utc_slots_match_croniter(expr: str, start: datetime, start_on_a_slot: bool) -> None:
    """croniter is an independent oracle only where it is right: days with no DST change.

    It fires a fixed time twice in a repeated fall-back hour (and returns naive UTC
    unless started aware), so it is asked only in UTC, where no day changes offset.
    Our preview yields slots at or after ``start``; croniter's get_next is strictly
    after its start and works in whole minutes, so started one second before ``start``
    (whole seconds here) it yields exactly the slots at or after ``start``.
    """
    try:
        normalize_cron(expr)
    except ValidationFailed:
        assume(False)  # e.g. "0 0 31 2 *": never matches
    if start_on_a_slot:  # the inclusive boundary: `start` is itself a slot
        start = croniter(expr, start).get_next(datetime)
    timing = parse_timing(ScheduleSpec(kind="cron", cron_expr=expr, timezone="UTC"))
    got = preview(timing, start, 20)
    oracle = croniter(expr, start - timedelta(seconds=1))
    expected = [oracle.get_next(datetime) for _ in range(20)]
    assert len(got) == 20
    assert got == expected
    assert all(slot.tzinfo is UTC for slot in got)
    if start_on_a_slot:
        assert got[0] == start
    else:
        assert got[0] >= start
