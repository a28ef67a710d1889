"""Tests of the pure schedule module: slots, DST, validation, misfire, overlap, presets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepwise.errors import ValidationFailed
from stepwise.schedule import (
    KINDS,
    MAX_RUN_ALL,
    MAX_SKIPPED_RECORDED,
    MISFIRE_POLICIES,
    OVERLAP_POLICIES,
    PRESETS,
    DispatchPlan,
    ScheduleSpec,
    decide_overlap,
    describe,
    first_slot,
    initial_next_run_at,
    next_slot,
    normalize_cron,
    plan_dispatch,
    preset,
    preview,
    slots_between,
    validate_spec,
)

MINUTE = timedelta(minutes=1)
NY, BERLIN, LORD_HOWE = "America/New_York", "Europe/Berlin", "Australia/Lord_Howe"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def local(zone: str, *args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(zone))  # type: ignore[misc]


def cron(expr: str, zone: str = "UTC", **kwargs: object) -> ScheduleSpec:
    return ScheduleSpec(kind="cron", timezone=zone, cron_expr=expr, **kwargs)  # type: ignore[arg-type]


def every(seconds: int, anchor: datetime, **kwargs: object) -> ScheduleSpec:
    return ScheduleSpec(kind="interval", interval_s=seconds, anchor=anchor, **kwargs)  # type: ignore[arg-type]


def once(run_at: datetime, zone: str = "UTC") -> ScheduleSpec:
    return ScheduleSpec(kind="once", timezone=zone, run_at=run_at)


def errors_of(spec: ScheduleSpec) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as caught:
        validate_spec(spec)
    return {e.field: e.message for e in caught.value.errors}


def hm(instants: list[datetime]) -> list[str]:
    return [f"{i:%m-%d %H:%MZ}" for i in instants]


# --- slot generation ----------------------------------------------------------------


def test_cron_next_slot_is_strictly_after_and_utc() -> None:
    # given a daily 09:00 schedule in Berlin (CET = UTC+1 in January)
    spec = cron("0 9 * * *", BERLIN)
    # when asking for the slot after exactly 08:00Z, and the first at/after it
    after = utc(2026, 1, 10, 8, 0)
    # then both are 08:00Z-or-later, strict vs inclusive, in UTC
    assert first_slot(spec, after) == utc(2026, 1, 10, 8, 0)
    assert next_slot(spec, after) == utc(2026, 1, 11, 8, 0)
    assert next_slot(spec, after).tzinfo is UTC  # type: ignore[union-attr]


def test_preview_returns_ten_slots_in_order() -> None:
    spec = cron("*/15 * * * *")
    slots = preview(spec, utc(2026, 5, 1, 10, 7))
    assert len(slots) == 10
    assert slots[0] == utc(2026, 5, 1, 10, 15)
    assert all(b - a == timedelta(minutes=15) for a, b in pairwise(slots))


def test_start_and_end_bound_slots_inclusively() -> None:
    # given an hourly schedule bounded to 10:00..13:00
    spec = cron("0 * * * *", start_at=utc(2026, 5, 1, 10), end_at=utc(2026, 5, 1, 13))
    # when listing the day
    slots = list(slots_between(spec, utc(2026, 5, 1), utc(2026, 5, 2)))
    # then start_at and end_at themselves are slots
    assert hm(slots) == ["05-01 10:00Z", "05-01 11:00Z", "05-01 12:00Z", "05-01 13:00Z"]
    assert next_slot(spec, utc(2026, 5, 1, 13)) is None


def test_slots_between_is_half_open() -> None:
    spec = cron("0 * * * *")
    slots = list(slots_between(spec, utc(2026, 5, 1, 10), utc(2026, 5, 1, 12)))
    assert slots == [utc(2026, 5, 1, 10), utc(2026, 5, 1, 11)]


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


def test_weekly_macro_runs_on_sundays() -> None:
    slots = preview(cron("@weekly", NY), utc(2026, 6, 1), 2)
    assert slots == [utc(2026, 6, 7, 4), utc(2026, 6, 14, 4)]  # midnight EDT


def test_normalize_collapses_whitespace_and_uppercases_names() -> None:
    assert normalize_cron("  0   9 * *\tmon-fri ") == "0 9 * * MON-FRI"


def test_interval_slots_follow_anchor_in_real_time_across_dst() -> None:
    # given an hourly interval anchored at Berlin midnight on the spring-forward day
    anchor = local(BERLIN, 2026, 3, 29, 0, 0)
    spec = every(3600, anchor)
    # when listing four slots
    slots = preview(spec, anchor, 4)
    # then they are one real hour apart (not wall-clock hours)
    assert hm(slots) == ["03-28 23:00Z", "03-29 00:00Z", "03-29 01:00Z", "03-29 02:00Z"]


def test_interval_uses_start_at_over_anchor_and_never_before_it() -> None:
    spec = every(30, utc(2026, 1, 1), start_at=utc(2026, 5, 1, 12, 0, 10))
    assert first_slot(spec, utc(2026, 1, 1)) == utc(2026, 5, 1, 12, 0, 10)
    assert next_slot(spec, utc(2026, 5, 1, 12, 0, 10)) == utc(2026, 5, 1, 12, 0, 40)
    assert first_slot(spec, utc(2026, 5, 1, 12, 0, 41)) == utc(2026, 5, 1, 12, 1, 10)


def test_once_has_a_single_slot() -> None:
    spec = once(utc(2026, 7, 1, 9))
    assert preview(spec, utc(2026, 1, 1)) == [utc(2026, 7, 1, 9)]
    assert next_slot(spec, utc(2026, 7, 1, 9)) is None


def test_initial_next_run_at() -> None:
    now = utc(2026, 5, 1, 10, 7)
    assert initial_next_run_at(cron("0 * * * *"), now) == (utc(2026, 5, 1, 11), None)
    assert initial_next_run_at(once(utc(2026, 5, 1)), now) == (None, "run_at has passed")
    ended = cron("0 * * * *", end_at=utc(2026, 5, 1, 10))
    assert initial_next_run_at(ended, now) == (None, "end_at reached")


def test_naive_argument_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_slot(cron("* * * * *"), datetime(2026, 1, 1))


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
    spec = cron(expr, zone)
    # when listing the slots between local midnight and local 03:01 (both exist once)
    start, end = local(zone, *day, 0, 0), local(zone, *day, 3, 1)
    # then exactly the Debian-cron instants come out
    assert hm(list(slots_between(spec, start, end))) == expected


def test_fall_back_fixed_time_runs_once_even_when_asked_from_the_second_pass() -> None:
    # given 01:30 daily in New York; `after` is 01:10 EST, i.e. the repeated hour's second pass
    spec = cron("30 1 * * *", NY)
    after = utc(2026, 11, 1, 6, 10)
    # then the next slot is tomorrow, never the already-passed first 01:30 (05:30Z)
    assert next_slot(spec, after) == utc(2026, 11, 2, 6, 30)


def test_wildcard_search_across_a_distant_dst_change_uses_the_new_offset() -> None:
    # given a wildcard expression matching only on Berlin's spring-forward day, and an
    # `after` with microseconds two days earlier (the offset change lies in between)
    spec = cron("* 12 29 3 *", BERLIN)
    after = utc(2026, 3, 27, 1, 30) + timedelta(microseconds=500_000)
    # then the first slot is 12:00 CEST (10:00Z), not 12:00 CET
    assert next_slot(spec, after) == utc(2026, 3, 29, 10, 0)


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
    spec = cron(expr, zone)
    # when everything missed expires (window 0, skip)
    plan = plan_dispatch(
        spec,
        next_run_at=start,
        now=now,
        horizon=timedelta(0),
        grace=timedelta(0),
        misfire_policy="skip",
        catchup_window_s=0,
        dispatched=0,
    )
    # then the fast count equals walking every slot
    assert plan.expired == sum(1 for _ in slots_between(spec, start, now))
    assert plan.run == [] and plan.skipped == []


# --- validation -----------------------------------------------------------------------


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
    errors = errors_of(cron(expr))
    assert errors["cron_expr"].startswith(f"'{expr}' is not a valid cron expression: ")
    assert reason in errors["cron_expr"]


def test_weekly_macro_is_valid() -> None:
    validate_spec(cron("@weekly", BERLIN))


@given(st.text(alphabet="0123456789*/-,#LW? @", max_size=24))
def test_normalize_cron_never_crashes(expr: str) -> None:
    try:
        normalized = normalize_cron(expr)
    except ValidationFailed as exc:
        assert [e.field for e in exc.errors] == ["cron_expr"]
    else:
        assert len(normalized.split(" ")) == 5


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        (
            cron("0 9 * * *", "Mars/Olympus"),
            "timezone",
            "unknown timezone 'Mars/Olympus'; use an IANA name such as Europe/Berlin",
        ),
        (every(9, utc(2026, 1, 1)), "interval_s", "must be at least 10 seconds"),
        (ScheduleSpec(kind="interval", anchor=utc(2026, 1, 1)), "interval_s", "is required"),
        (ScheduleSpec(kind="interval", interval_s=60), "anchor", "is required"),
        (
            cron("0 9 * * *", start_at=utc(2026, 2, 1), end_at=utc(2026, 1, 1)),
            "end_at",
            "must be after start_at",
        ),
        (once(datetime(2026, 5, 1, 9)), "run_at", "must include a timezone"),
        (cron("* * * * *", start_at=datetime(2026, 5, 1)), "start_at", "must include a timezone"),
        (ScheduleSpec(kind="once"), "run_at", "is required for a one-time schedule"),
        (cron("* * * * *", max_runs=0), "max_runs", "must be at least 1"),
        (ScheduleSpec(kind="weekly"), "kind", "unknown kind 'weekly'; use one of cron, interval"),
        (cron("  "), "cron_expr", "is required for a cron schedule"),
        (
            ScheduleSpec(kind="once", run_at=utc(2026, 1, 1), end_at=utc(2025, 1, 1)),
            "run_at",
            "must lie between start_at and end_at",
        ),
    ],
)
def test_each_bad_field_is_named(spec: ScheduleSpec, field: str, message: str) -> None:
    assert message in errors_of(spec)[field]


def test_several_errors_are_reported_together() -> None:
    spec = cron(
        "0 25 * * *", "Mars/Olympus", max_runs=0, start_at=utc(2026, 2, 1), end_at=utc(2026, 1, 1)
    )
    assert set(errors_of(spec)) == {"cron_expr", "timezone", "max_runs", "end_at"}


def test_slot_functions_validate_first() -> None:
    with pytest.raises(ValidationFailed):
        preview(cron("0 25 * * *"), utc(2026, 1, 1))


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
    with pytest.raises(ValidationFailed):
        describe(cron("0 25 * * *"))


# --- misfire / dispatch planning ------------------------------------------------------

NOW = utc(2026, 6, 1, 12, 0)


def plan(spec: ScheduleSpec, next_run_at: datetime, **kwargs: object) -> DispatchPlan:
    args: dict[str, object] = {
        "now": NOW,
        "horizon": timedelta(seconds=60),
        "grace": timedelta(seconds=30),
        "misfire_policy": "run_once",
        "catchup_window_s": 3600,
        "dispatched": 0,
    }
    return plan_dispatch(spec, next_run_at=next_run_at, **{**args, **kwargs})  # type: ignore[arg-type]


def test_due_slots_inside_horizon_run_including_future_ones() -> None:
    # given a 10-second interval due now
    spec = every(10, utc(2026, 1, 1))
    # when planning with a 60 s horizon
    result = plan(spec, NOW)
    # then the six slots of the next minute run and the seventh is next
    assert result.run == [NOW + timedelta(seconds=10 * k) for k in range(6)]
    assert result.next_run_at == NOW + timedelta(seconds=60)
    assert (result.skipped, result.expired, result.completed_reason) == ([], 0, None)


def test_slot_within_grace_is_due_not_missed() -> None:
    result = plan(cron("* * * * *"), NOW - timedelta(seconds=20), misfire_policy="skip")
    assert result.run == [NOW]  # 11:59:40 is no slot; 12:00 runs
    assert result.skipped == []


@pytest.mark.parametrize(
    ("policy", "ran_missed", "skipped"),
    [("skip", 0, 10), ("run_once", 1, 9), ("run_all", 10, 0)],
)
def test_misfire_policies(policy: str, ran_missed: int, skipped: int) -> None:
    # given ten minutes of every-minute slots missed inside the window
    missed = [NOW - MINUTE * k for k in range(10, 0, -1)]
    # when planning
    result = plan(cron("* * * * *"), missed[0], misfire_policy=policy)
    # then the policy decides which missed slots run; the due slot always runs
    assert result.run == [*missed[len(missed) - ran_missed :], NOW]
    assert result.skipped == missed[: len(missed) - ran_missed]
    assert result.expired == 0
    assert result.next_run_at == NOW + MINUTE


def test_slots_older_than_the_window_expire() -> None:
    # given next_run_at 3 hours ago and a 1-hour window
    result = plan(cron("*/10 * * * *"), NOW - timedelta(hours=3), misfire_policy="run_all")
    # then 12 slots (09:00..10:50) expire, 6 (11:00..11:50) run late, 12:00 runs
    assert result.expired == 12
    assert hm(result.run) == [
        "06-01 11:00Z",
        "06-01 11:10Z",
        "06-01 11:20Z",
        "06-01 11:30Z",
        "06-01 11:40Z",
        "06-01 11:50Z",
        "06-01 12:00Z",
    ]


def test_run_all_runs_at_most_100_and_records_at_most_100_skipped() -> None:
    # given 300 missed every-minute slots inside a 5-hour window, 300 more before it
    spec = cron("* * * * *")
    result = plan(spec, NOW - timedelta(hours=10), misfire_policy="run_all", catchup_window_s=18000)
    # then the newest 100 run (oldest first), the 100 before are skipped, the rest counted
    assert result.run[:-1] == [NOW - MINUTE * k for k in range(MAX_RUN_ALL, 0, -1)]
    assert result.run[-1] == NOW
    assert result.skipped == [NOW - MINUTE * k for k in range(200, 100, -1)]
    assert result.expired == 300 + 100


def test_skip_records_only_the_newest_100() -> None:
    result = plan(
        cron("* * * * *"), NOW - timedelta(hours=10), misfire_policy="skip", catchup_window_s=18000
    )
    assert len(result.skipped) == MAX_SKIPPED_RECORDED
    assert result.skipped[-1] == NOW - MINUTE
    assert result.expired + len(result.skipped) == 600
    assert result.run == [NOW]


def test_a_year_of_every_minute_downtime_is_counted_not_walked() -> None:
    # given a Berlin every-minute schedule (two DST changes) down for all of 2026
    now = utc(2027, 1, 1)
    spec = cron("* * * * *", BERLIN)
    # when planning
    result = plan(spec, utc(2026, 1, 1), now=now)
    # then 525,600 minutes: all but the last hour expire, 59 skipped, 1 + the due slot run
    assert result.expired == 365 * 1440 - 60
    assert len(result.skipped) == 59
    assert result.run == [now - MINUTE, now]
    assert result.next_run_at == now + MINUTE


def test_a_year_of_a_fixed_daily_time_counts_dst_days_once() -> None:
    result = plan(cron("30 2 * * *", BERLIN), utc(2026, 1, 1), now=utc(2027, 1, 1))
    assert result.expired == 365
    assert result.next_run_at == utc(2027, 1, 1, 1, 30)


def test_interval_backlog_is_counted_arithmetically() -> None:
    result = plan(every(10, utc(2020, 1, 1)), utc(2020, 1, 1), misfire_policy="skip")
    total = int((NOW - utc(2020, 1, 1)).total_seconds()) // 10 - 3  # 3 slots within grace
    assert result.expired + len(result.skipped) == total


def test_once_completes_whether_run_or_missed() -> None:
    run_at = NOW - timedelta(minutes=5)
    assert plan(once(run_at), run_at) == DispatchPlan([run_at], [], 0, None, "ran once")
    assert plan(once(run_at), run_at, misfire_policy="skip") == DispatchPlan(
        [], [run_at], 0, None, "ran once"
    )
    old = NOW - timedelta(days=2)
    assert plan(once(old), old) == DispatchPlan([], [], 1, None, "ran once")
    future = NOW + timedelta(days=1)
    assert plan(once(future), future) == DispatchPlan([], [], 0, future, None)


def test_max_runs_counts_dispatched_and_planned_runs_only() -> None:
    # given max_runs=5 with 3 already dispatched and 10 missed slots under run_all
    spec = cron("* * * * *", max_runs=5)
    result = plan(spec, NOW - MINUTE * 10, misfire_policy="run_all", dispatched=3)
    # then only two more run and the schedule completes
    assert result.run == [NOW - MINUTE * 10, NOW - MINUTE * 9]
    assert (result.next_run_at, result.completed_reason) == (None, "max_runs reached")


def test_skipped_slots_do_not_use_up_max_runs() -> None:
    spec = cron("* * * * *", max_runs=2)
    result = plan(spec, NOW - MINUTE * 10, misfire_policy="skip")
    assert result.run == [NOW] and len(result.skipped) == 10
    assert result.next_run_at == NOW + MINUTE


def test_end_at_completes_the_schedule() -> None:
    spec = cron("* * * * *", end_at=NOW + timedelta(seconds=30))
    result = plan(spec, NOW)
    assert result.run == [NOW]
    assert (result.next_run_at, result.completed_reason) == (None, "end_at reached")


def test_unknown_misfire_policy_is_rejected() -> None:
    with pytest.raises(ValidationFailed) as caught:
        plan(cron("* * * * *"), NOW, misfire_policy="later")
    assert caught.value.for_field("misfire_policy")


# --- overlap & presets ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "running", "waiting", "decision"),
    [
        ("allow", True, True, "run"),
        ("skip", False, False, "run"),
        ("skip", True, False, "skip"),
        ("buffer_one", False, True, "run"),
        ("buffer_one", True, False, "wait"),
        ("buffer_one", True, True, "skip"),
    ],
)
def test_decide_overlap(policy: str, running: bool, waiting: bool, decision: str) -> None:
    assert decide_overlap(policy, running=running, waiting=waiting) == decision


def test_presets_are_valid_and_findable() -> None:
    assert len(PRESETS) == 12
    for item in PRESETS:
        assert preset(item.key) == item
        if item.cron_expr is not None:
            assert normalize_cron(item.cron_expr) == item.cron_expr
    assert preset("weekdays_9am").cron_expr == "0 9 * * 1-5"
    assert preset("once").cron_expr is None
    with pytest.raises(ValidationFailed):
        preset("fortnightly")


def test_policy_constants() -> None:
    assert KINDS == ("cron", "interval", "once")
    assert MISFIRE_POLICIES == ("skip", "run_once", "run_all")
    assert OVERLAP_POLICIES == ("skip", "buffer_one", "allow")
