"""Tests of core.schedule: presets, parse_schedule's rules, dispatch planning, overlap."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from core.cron import normalize_cron
from core.errors import ValidationFailed
from core.limits import (
    DEFAULT_CATCHUP_WINDOW_S,
    MAX_CATCHUP_WINDOW_S,
    MAX_JITTER_S,
    MAX_RUN_ALL,
    MAX_SKIPPED_RECORDED,
)
from core.schedule import (
    PRESETS,
    DispatchPlan,
    ScheduleDefinition,
    ScheduleInput,
    catchup_window_cap,
    decide_overlap,
    initial_next_run_at,
    parse_schedule,
    plan_dispatch,
    preset,
)
from core.timing import Timing, parse_timing
from core.vocabulary import (
    CompletedReason,
    MisfirePolicy,
    OverlapDecision,
    OverlapPolicy,
    ScheduleKind,
    one_of,
)
from testkit.timing import BERLIN, MINUTE, cron, cron_spec, every, hm, once, utc

RETENTION_DAYS = 90

# --- presets --------------------------------------------------------------------------


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
    # the words are stored in rows and typed in forms: they must not change
    assert list(ScheduleKind) == ["cron", "interval", "once"]
    assert list(MisfirePolicy) == ["skip", "run_once", "run_all"]
    assert list(OverlapPolicy) == ["skip", "buffer_one", "allow"]


# --- parse_schedule -------------------------------------------------------------------


def test_parse_schedule_defaults() -> None:
    spec = cron_spec("*/5 * * * *", BERLIN)
    definition = parse_schedule(ScheduleInput(spec=spec), retention_days=RETENTION_DAYS)
    assert definition == ScheduleDefinition(
        timing=parse_timing(spec),
        misfire_policy=MisfirePolicy.RUN_ONCE,
        catchup_window_s=DEFAULT_CATCHUP_WINDOW_S,
        overlap_policy=OverlapPolicy.SKIP,
        jitter_s=0,
        enabled=True,
    )


@pytest.mark.parametrize("policy", list(MisfirePolicy))
def test_every_misfire_policy_is_accepted_as_its_enum(policy: MisfirePolicy) -> None:
    data = ScheduleInput(spec=cron_spec("* * * * *"), misfire_policy=policy.value)
    parsed = parse_schedule(data, retention_days=RETENTION_DAYS).misfire_policy
    assert parsed is policy


@pytest.mark.parametrize("policy", list(OverlapPolicy))
def test_every_overlap_policy_is_accepted_as_its_enum(policy: OverlapPolicy) -> None:
    data = ScheduleInput(spec=cron_spec("* * * * *"), overlap_policy=policy.value)
    parsed = parse_schedule(data, retention_days=RETENTION_DAYS).overlap_policy
    assert parsed is policy


def test_unknown_misfire_policy_is_rejected() -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_schedule(
            ScheduleInput(spec=cron_spec("* * * * *"), misfire_policy="later"),
            retention_days=RETENTION_DAYS,
        )
    message = caught.value.for_field("misfire_policy")
    assert message == f"must be one of {one_of(MisfirePolicy)}"
    assert "one of" in message


def test_unknown_overlap_policy_is_rejected() -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_schedule(
            ScheduleInput(spec=cron_spec("* * * * *"), overlap_policy="queue"),
            retention_days=RETENTION_DAYS,
        )
    message = caught.value.for_field("overlap_policy")
    assert message == f"must be one of {one_of(OverlapPolicy)}"
    assert "one of" in message


@pytest.mark.parametrize("retention_days", [RETENTION_DAYS, 7, 2, 1])
def test_catchup_window_is_capped_by_retention(retention_days: int) -> None:
    # history must outlive the window, or a purged slot could run again
    cap = min(MAX_CATCHUP_WINDOW_S, retention_days * 86400)
    assert catchup_window_cap(retention_days) == cap

    def window(seconds: int) -> ScheduleInput:
        return ScheduleInput(spec=cron_spec("* * * * *"), catchup_window_s=seconds)

    for accepted in (0, cap):
        parsed = parse_schedule(window(accepted), retention_days=retention_days)
        assert parsed.catchup_window_s == accepted
    for rejected in (-1, cap + 1):
        with pytest.raises(ValidationFailed) as caught:
            parse_schedule(window(rejected), retention_days=retention_days)
        assert caught.value.for_field("catchup_window_s") == (
            f"must be between 0 and {cap} seconds"
        )


def test_jitter_lies_between_zero_and_its_maximum() -> None:
    def jitter(seconds: int) -> ScheduleInput:
        return ScheduleInput(spec=cron_spec("* * * * *"), jitter_s=seconds)

    for accepted in (0, MAX_JITTER_S):
        assert parse_schedule(jitter(accepted), retention_days=RETENTION_DAYS).jitter_s == accepted
    for rejected in (-1, MAX_JITTER_S + 1):
        with pytest.raises(ValidationFailed) as caught:
            parse_schedule(jitter(rejected), retention_days=RETENTION_DAYS)
        assert caught.value.for_field("jitter_s") == (
            f"must be between 0 and {MAX_JITTER_S} seconds"
        )


def test_parse_schedule_reports_every_problem_together() -> None:
    data = ScheduleInput(
        spec=cron_spec("0 25 * * *", "Mars/Olympus"),
        misfire_policy="later",
        overlap_policy="queue",
        catchup_window_s=-1,
        jitter_s=MAX_JITTER_S + 1,
    )
    with pytest.raises(ValidationFailed) as caught:
        parse_schedule(data, retention_days=RETENTION_DAYS)
    assert {e.field for e in caught.value.errors} == {
        "cron_expr",
        "timezone",
        "misfire_policy",
        "overlap_policy",
        "catchup_window_s",
        "jitter_s",
    }


# --- initial next_run_at --------------------------------------------------------------


def test_initial_next_run_at() -> None:
    now = utc(2026, 5, 1, 10, 7)
    assert initial_next_run_at(cron("0 * * * *"), now) == (utc(2026, 5, 1, 11), None)
    assert initial_next_run_at(once(utc(2026, 5, 1)), now) == (None, "its run time has passed")
    ended = cron("0 * * * *", end_at=utc(2026, 5, 1, 10))
    assert initial_next_run_at(ended, now) == (None, "reached its end")


# --- misfire / dispatch planning ------------------------------------------------------

NOW = utc(2026, 6, 1, 12, 0)
WINDOW_S = 3600  # the catch-up window these tests plan with: one hour


def plan(timing: Timing, next_run_at: datetime, **kwargs: object) -> DispatchPlan:
    args: dict[str, object] = {
        "now": NOW,
        "horizon": timedelta(seconds=60),
        "grace": timedelta(seconds=30),
        "misfire_policy": MisfirePolicy.RUN_ONCE,
        "catchup_window_s": WINDOW_S,
        "dispatched": 0,
    }
    return plan_dispatch(timing, next_run_at=next_run_at, **{**args, **kwargs})  # type: ignore[arg-type]


def test_due_slots_inside_horizon_run_including_future_ones() -> None:
    # given a 10-second interval due now
    timing = every(10, utc(2026, 1, 1))
    # when planning with a 60 s horizon
    result = plan(timing, NOW)
    # then the six slots of the next minute run and the seventh is next
    assert result.run == [NOW + timedelta(seconds=10 * k) for k in range(6)]
    assert result.next_run_at == NOW + timedelta(seconds=60)
    assert (result.skipped, result.expired, result.completed_reason) == ([], 0, None)


def test_slot_within_grace_is_due_not_missed() -> None:
    result = plan(cron("* * * * *"), NOW - timedelta(seconds=20), misfire_policy=MisfirePolicy.SKIP)
    assert result.run == [NOW]  # 11:59:40 is no slot; 12:00 runs
    assert result.skipped == []


@pytest.mark.parametrize(
    ("policy", "ran_missed", "skipped"),
    [(MisfirePolicy.SKIP, 0, 10), (MisfirePolicy.RUN_ONCE, 1, 9), (MisfirePolicy.RUN_ALL, 10, 0)],
)
def test_misfire_policies(policy: MisfirePolicy, ran_missed: int, skipped: int) -> None:
    # given ten minutes of every-minute slots missed inside the window
    missed = [NOW - MINUTE * k for k in range(10, 0, -1)]
    # when planning
    result = plan(cron("* * * * *"), missed[0], misfire_policy=policy)
    # then the policy decides which missed slots run; the due slot always runs
    assert result.run == [*missed[len(missed) - ran_missed :], NOW]
    assert result.skipped == missed[: len(missed) - ran_missed]
    assert len(result.skipped) == skipped
    assert result.expired == 0
    assert result.next_run_at == NOW + MINUTE


def test_slots_older_than_the_window_expire() -> None:
    # given next_run_at 3 hours ago and a 1-hour window
    result = plan(
        cron("*/10 * * * *"), NOW - timedelta(hours=3), misfire_policy=MisfirePolicy.RUN_ALL
    )
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
    timing = cron("* * * * *")
    result = plan(
        timing,
        NOW - timedelta(hours=10),
        misfire_policy=MisfirePolicy.RUN_ALL,
        catchup_window_s=5 * 3600,
    )
    # then the newest MAX_RUN_ALL run (oldest first), the MAX_SKIPPED_RECORDED before
    # them are skipped, the rest counted
    assert result.run[:-1] == [NOW - MINUTE * k for k in range(MAX_RUN_ALL, 0, -1)]
    assert result.run[-1] == NOW
    oldest_skipped = MAX_RUN_ALL + MAX_SKIPPED_RECORDED  # minutes before NOW
    assert result.skipped == [NOW - MINUTE * k for k in range(oldest_skipped, MAX_RUN_ALL, -1)]
    assert result.expired == 300 + (300 - MAX_RUN_ALL - MAX_SKIPPED_RECORDED)


def test_skip_records_only_the_newest_100() -> None:
    result = plan(
        cron("* * * * *"),
        NOW - timedelta(hours=10),
        misfire_policy=MisfirePolicy.SKIP,
        catchup_window_s=5 * 3600,
    )
    assert len(result.skipped) == MAX_SKIPPED_RECORDED
    assert result.skipped[-1] == NOW - MINUTE
    assert result.expired + len(result.skipped) == 600
    assert result.run == [NOW]


def test_a_year_of_every_minute_downtime_is_counted_not_walked() -> None:
    # given a Berlin every-minute schedule (two DST changes) down for all of 2026
    now = utc(2027, 1, 1)
    timing = cron("* * * * *", BERLIN)
    # when planning
    result = plan(timing, utc(2026, 1, 1), now=now)
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
    result = plan(every(10, utc(2020, 1, 1)), utc(2020, 1, 1), misfire_policy=MisfirePolicy.SKIP)
    total = int((NOW - utc(2020, 1, 1)).total_seconds()) // 10 - 3  # 3 slots within grace
    assert result.expired + len(result.skipped) == total


def test_once_completes_whether_run_or_missed() -> None:
    run_at = NOW - timedelta(minutes=5)
    assert plan(once(run_at), run_at) == DispatchPlan([run_at], [], 0, None, "ran once", catchup=1)
    assert plan(once(run_at), run_at, misfire_policy=MisfirePolicy.SKIP) == DispatchPlan(
        [], [run_at], 0, None, "ran once"
    )
    old = NOW - timedelta(days=2)
    assert plan(once(old), old) == DispatchPlan([], [], 1, None, "ran once")
    future = NOW + timedelta(days=1)
    assert plan(once(future), future) == DispatchPlan([], [], 0, future, None)


def test_max_runs_counts_dispatched_and_planned_runs_only() -> None:
    # given max_runs=5 with 3 already dispatched and 10 missed slots under run_all
    timing = cron("* * * * *", max_runs=5)
    result = plan(timing, NOW - MINUTE * 10, misfire_policy=MisfirePolicy.RUN_ALL, dispatched=3)
    # then only two more run and the schedule completes
    assert result.run == [NOW - MINUTE * 10, NOW - MINUTE * 9]
    assert (result.next_run_at, result.completed_reason) == (None, CompletedReason.MAX_RUNS)
    assert CompletedReason.MAX_RUNS == "reached its maximum number of runs"


def test_skipped_slots_do_not_use_up_max_runs() -> None:
    timing = cron("* * * * *", max_runs=2)
    result = plan(timing, NOW - MINUTE * 10, misfire_policy=MisfirePolicy.SKIP)
    assert result.run == [NOW] and len(result.skipped) == 10
    assert result.next_run_at == NOW + MINUTE


def test_missed_slots_that_run_are_marked_as_catch_up() -> None:
    # given a minutely schedule whose dispatcher was down for five slots
    result = plan(cron("* * * * *"), NOW - MINUTE * 5, misfire_policy=MisfirePolicy.RUN_ALL)
    # then the missed slots come first in the plan, counted as catch-up; the due ones follow
    assert result.run[: result.catchup] == [NOW - MINUTE * n for n in range(5, 0, -1)]
    assert result.run[result.catchup :] == [NOW]


def test_end_at_completes_the_schedule() -> None:
    timing = cron("* * * * *", end_at=NOW + timedelta(seconds=30))
    result = plan(timing, NOW)
    assert result.run == [NOW]
    assert (result.next_run_at, result.completed_reason) == (None, "reached its end")


# --- overlap --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "running", "waiting", "decision"),
    [
        (OverlapPolicy.ALLOW, True, True, OverlapDecision.RUN),
        (OverlapPolicy.SKIP, False, False, OverlapDecision.RUN),
        (OverlapPolicy.SKIP, True, False, OverlapDecision.SKIP),
        (OverlapPolicy.BUFFER_ONE, False, True, OverlapDecision.RUN),
        (OverlapPolicy.BUFFER_ONE, True, False, OverlapDecision.WAIT),
        (OverlapPolicy.BUFFER_ONE, True, True, OverlapDecision.SKIP),
    ],
)
def test_decide_overlap(
    policy: OverlapPolicy, running: bool, waiting: bool, decision: OverlapDecision
) -> None:
    assert decide_overlap(policy, running=running, waiting=waiting) is decision


@pytest.mark.parametrize("policy", [OverlapPolicy.SKIP, OverlapPolicy.BUFFER_ONE])
@pytest.mark.parametrize("running", [False, True])
def test_a_slot_never_starts_after_a_later_one(policy: OverlapPolicy, running: bool) -> None:
    # given a slot whose message came late, after a later slot of its schedule started
    decision = decide_overlap(policy, running=running, waiting=False, later_started=True)
    # then it is superseded, whether the later run still runs or has ended
    assert decision is OverlapDecision.SUPERSEDED


def test_allow_runs_a_late_slot_beside_later_ones() -> None:
    decision = decide_overlap(OverlapPolicy.ALLOW, running=True, waiting=False, later_started=True)
    assert decision is OverlapDecision.RUN


@pytest.mark.parametrize(
    ("policy", "running", "backlog", "catchup", "decision"),
    [
        # catch-up runs wait for the one before them, whatever the policy but allow
        (OverlapPolicy.SKIP, True, False, True, OverlapDecision.WAIT),
        (OverlapPolicy.SKIP, False, True, True, OverlapDecision.WAIT),
        (OverlapPolicy.BUFFER_ONE, True, True, True, OverlapDecision.WAIT),
        (OverlapPolicy.SKIP, False, False, True, OverlapDecision.RUN),
        (OverlapPolicy.ALLOW, True, True, True, OverlapDecision.RUN),
        # a slot due while catch-up runs wait is treated as overlapping them
        (OverlapPolicy.SKIP, False, True, False, OverlapDecision.SKIP),
        (OverlapPolicy.BUFFER_ONE, False, True, False, OverlapDecision.SKIP),
    ],
)
def test_catch_up_runs_queue_behind_each_other(
    policy: OverlapPolicy, running: bool, backlog: bool, catchup: bool, decision: OverlapDecision
) -> None:
    # a waiting catch-up run is also an earlier slot that is due and queued
    waiting = backlog
    found = decide_overlap(
        policy, running=running, waiting=waiting, backlog=backlog, catchup=catchup
    )
    assert found is decision
