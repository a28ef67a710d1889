"""A bounded, seeded chaos run: every kind of process killed while people act on schedules.

The Procfile's processes (two worker groups, a scheduler, a dispatcher) run eleven
schedules (five kinds, interval and cron, every overlap and misfire policy) against a
recording agent that fails 5 % of calls, on a PostgreSQL of the test's own
(`own_postgres`), which the test restarts. On a timeline (seeded jitter) the test
SIGKILLs and SIGTERMs each kind of process and restarts it, flushes Redis, runs a second
scheduler and dispatcher for a while, and pauses, resumes, edits and deletes. The
scheduler is down for longer than the dispatch horizon: the pause and the edit come
when their schedules have slots due that no dispatch reached. PostgreSQL restarts
twice: once during that outage, once shortly before a minute tick, which must still
dispatch (not leave its slots to the next minute's). A misfire grace of 15 s (and a
catch-up window of 20 s on one schedule) makes the misfire policies decide slots of the
outage. Then the history is checked against the slots computed from the schedules'
definitions (`slots_between`), not read back from what ran: each slot has one
execution or is counted in `missed_count`.

    STEPWISE_CHAOS_SEED=7 pytest tests/test_chaos.py -s
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from core.schedule import ScheduleInput
from core.settings import get_settings
from core.timing import parse_timing, slots_between, spec_of
from core.vocabulary import OPEN_STATUSES, AuditAction, ExecutionStatus
from db.models import AuditLog, Execution, Heartbeat, Schedule, StepRun
from db.runs import LOST_STEP_ERROR
from db.session import db_now, session_scope
from service import automations, schedules
from stepwise.demo_agent import Call, Reply
from tasks import periodic
from tasks.send import send_run
from testkit.factories import (
    fetch,
    make_automation,
    make_schedule,
    now,
    person,
    schedule_definition,
)
from testkit.servers import OwnPostgres
from testkit.waiting import wait_for

pytestmark = pytest.mark.slow
SEED = int(os.environ.get("STEPWISE_CHAOS_SEED", "11"))
READY = "Worker process is ready for action"
TICK_SENT = "Scheduling Actor(dispatch)"  # what the scheduler logs as it sends a tick
LEAD_S = 15  # from setup to the first slot
COPIES = 2  # schedules of each kind (each with its own automation)
WINDOW_S = 220  # slots are bounded to this window
FAILURE_RATE = 0.05
MISFIRE_GRACE_S = 15  # a slot dispatched later than this is missed (the misfire policy decides)
# How long the paused and edited schedules' first undispatched slot must be overdue when
# the scheduler outage's pause and edit come: slots both missed and within the grace.
BEHIND_S = 30
PG_DOWN_S = 2
TICK = timedelta(microseconds=1)
# What the one execution of a slot that should run ends as (skipped: by a policy).
RAN = (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.SKIPPED)


class RecordingAgent:
    """Answers like an agent: a short random delay, 5 % of calls fail with a 503.

    Counts the 200 answers per Idempotency-Key: a key answered twice means a step
    was executed twice at the agent.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.lock = threading.Lock()
        self.answered: Counter[str] = Counter()

    def __call__(self, call: Call) -> Reply:
        with self.lock:
            fail = self.rng.random() < FAILURE_RATE
            delay = self.rng.uniform(0, 2.5)
            if not fail:
                self.answered[call.idempotency_key or ""] += 1
        if fail:
            return Reply(503, {"error": "chaos: simulated failure"}, delay_s=delay)
        return Reply(200, {"output": f"step {call.body.get('step_number')}"}, delay_s=delay)


@dataclass
class Chaos:
    procs: Any
    redis: Any
    postgres: OwnPostgres
    rng: random.Random
    began: float = field(default_factory=time.monotonic)
    faults: list[tuple[str, datetime]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # found while the faults ran
    notes: list[str] = field(default_factory=list)  # what the run did, printed

    def at(self, offset_s: float, *, origin: float | None = None) -> None:
        """Wait until `offset_s` (plus up to 3 s of seeded jitter) after `origin`
        (the first slot unless given, in `time.monotonic()` seconds)."""
        base = self.began + LEAD_S if origin is None else origin
        moment = base + offset_s + self.rng.uniform(0, 3)
        time.sleep(max(0.0, moment - time.monotonic()))

    def note(self, what: str) -> None:
        self.faults.append((what, now()))

    def kill(self, key: str, name: str) -> None:
        self.note(f"SIGKILL {key}")
        self.procs.kill(key)
        self.procs.start(name, as_name=key)

    def term(self, key: str, name: str) -> None:
        self.note(f"SIGTERM {key}")
        self.procs.stop(key)  # SIGTERM to the group, waits for a clean exit
        self.procs.start(name, as_name=key)

    def restart_postgres(self) -> None:
        self.note("PostgreSQL restart")
        self.postgres.restart(down_s=PG_DOWN_S)


def _schedules(agent_url: str, start: datetime) -> dict[str, list[uuid.UUID]]:
    end = start + timedelta(seconds=WINDOW_S)

    def make(steps: int, *copies: dict[str, Any], **fields: Any) -> list[uuid.UUID]:
        return [
            make_schedule(
                make_automation(agent_url=agent_url, steps=steps, step_timeout_s=5),
                start_at=start,
                end_at=end,
                **fields,
                **copy,
            )
            for copy in copies or [{}] * COPIES
        ]

    return {
        # paused during the scheduler's outage, one for each misfire policy (the last
        # one's older missed slots fall out of its catch-up window: counted, no row)
        "every10_paused": make(
            2,
            {"misfire_policy": "skip"},
            {"misfire_policy": "run_once"},
            {"misfire_policy": "run_all", "catchup_window_s": 20},
            kind="interval",
            interval_s=10,
            overlap_policy="skip",
        ),
        # edited during the outage (policies only: its slots stay the same)
        "every15_buffer": make(
            3, kind="interval", interval_s=15, overlap_policy="buffer_one", misfire_policy="run_all"
        ),
        "every20_allow": make(2, kind="interval", interval_s=20, overlap_policy="allow"),
        "cron_minutely": make(2, kind="cron", cron_expr="* * * * *", misfire_policy="run_all"),
        # its automation is deleted half-way
        "every12_deleted": make(2, kind="interval", interval_s=12, misfire_policy="skip"),
    }


def _behind(schedule_ids: list[uuid.UUID]) -> float:
    """How long the least overdue of these schedules has had a slot due that no dispatch
    reached (its `next_run_at`, before the database's now), in seconds."""
    with session_scope() as session:
        clock = db_now(session)
        firsts = session.scalars(select(Schedule.next_run_at).where(Schedule.id.in_(schedule_ids)))
        return min((clock - first).total_seconds() for first in firsts if first is not None)


def _undispatched_slots(schedule_ids: list[uuid.UUID]) -> int:
    """The slots due now that no dispatch reached, over these schedules."""
    count = 0
    for schedule_id in schedule_ids:
        row = fetch(Schedule, schedule_id)
        assert row.next_run_at is not None
        count += len(list(slots_between(parse_timing(spec_of(row)), row.next_run_at, now())))
    return count


def _dispatch_beat() -> datetime | None:
    with session_scope() as session:
        beat = session.get(Heartbeat, "dispatch")
        return None if beat is None else beat.at


def _restart_postgres_before_a_tick(chaos: Chaos) -> tuple[datetime, datetime] | None:
    """Restart PostgreSQL some seconds before a minute tick, every dispatcher's pooled
    connections then dead; returns when it was back and when that tick comes (None when
    it came back too late to tell that tick from the next)."""
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)
    tick = datetime.fromtimestamp((time.time() // 60 + 1) * 60, UTC)
    chaos.restart_postgres()
    back = datetime.now(UTC)  # nothing but the tick dispatches from here on
    if back > tick - timedelta(seconds=3):
        chaos.notes.append("PostgreSQL came back too late to check the tick after it")
        return None
    return back, tick


def _check_the_tick_after(chaos: Chaos, back: datetime, tick: datetime) -> None:
    """The tick after the restart dispatched: the dispatch heartbeat moved after the
    restart and before the next minute's tick."""

    def dispatched() -> datetime | None:
        beat = _dispatch_beat()
        return beat if beat is not None and beat > back else None

    left = (tick - datetime.now(UTC)).total_seconds() + 45
    try:
        beat = wait_for(dispatched, timeout=max(left, 1), interval=1, message="the tick")
    except AssertionError:
        chaos.problems.append(f"the dispatch tick at {tick} after a PostgreSQL restart was lost")
        return
    chaos.notes.append(
        f"the tick at {tick:%H:%M:%S} after a PostgreSQL restart dispatched at {beat:%H:%M:%S}"
    )


def _timeline(chaos: Chaos, ids: dict[str, list[uuid.UUID]]) -> None:
    """The faults and the people, every ~10 s from the first slot on."""
    procs = chaos.procs
    who = person("chaos")  # a member of the default workspace, made before any fault
    # A scheduler outage longer than the dispatch horizon, with faults inside it.
    chaos.at(3)
    chaos.note("scheduler down (SIGKILL)")
    procs.kill("scheduler")
    chaos.at(10)
    chaos.kill("worker1", "worker")
    chaos.at(20)
    chaos.term("worker2", "worker")
    chaos.at(28)
    chaos.note("second dispatcher")
    procs.start("dispatcher", as_name="dispatcher2")
    chaos.at(40)
    chaos.restart_postgres()
    chaos.at(55)
    chaos.kill("dispatcher", "dispatcher")
    chaos.at(70)
    procs.stop("dispatcher2")
    # When no dispatch reached the slots of the last BEHIND_S seconds: pause and edit.
    settled = ids["every10_paused"] + ids["every15_buffer"]
    wait_for(
        lambda: _behind(settled) >= BEHIND_S,
        timeout=240,
        interval=1,
        message=f"slots due for {BEHIND_S} s that no dispatch reached",
    )
    chaos.notes.append(
        f"paused and edited with {_undispatched_slots(settled)} slot(s) due and not dispatched"
    )
    paused = time.monotonic()
    for schedule_id in ids["every10_paused"]:
        schedules.pause(schedule_id, actor=who)
    for schedule_id in ids["every15_buffer"]:
        data = schedule_definition(
            ScheduleInput(
                spec=spec_of(fetch(Schedule, schedule_id)),
                overlap_policy="skip",
                misfire_policy="run_once",
            )
        )
        schedules.update(schedule_id, data, actor=who)  # each dispatches soon after
    chaos.at(10, origin=paused)
    for schedule_id in ids["every10_paused"]:
        schedules.resume(schedule_id, actor=who)
    chaos.at(13, origin=paused)
    chaos.note("scheduler back")
    down = chaos.faults[-1][1] - chaos.faults[0][1]
    chaos.notes.append(f"the scheduler was down {down.total_seconds():.0f} s")
    ticks_before = procs.log("scheduler").count(TICK_SENT)
    procs.start("scheduler")
    chaos.at(16, origin=paused)
    chaos.note("second scheduler and dispatcher")
    procs.start("scheduler", as_name="scheduler2")
    procs.start("dispatcher", as_name="dispatcher2")
    chaos.at(20, origin=paused)
    chaos.note("FLUSHDB")
    chaos.redis.flushdb()
    chaos.at(25, origin=paused)
    for schedule_id in ids["every12_deleted"]:
        automation_id = fetch(Schedule, schedule_id).automation_id
        automations.delete(automation_id, actor=who)
    chaos.at(30, origin=paused)
    chaos.kill("worker2", "worker")
    chaos.at(40, origin=paused)
    procs.stop("scheduler2")
    procs.stop("dispatcher2")
    # The scheduler's first tick (sent as it starts) is behind it: the next is a minute's.
    procs.wait_ready("scheduler", TICK_SENT, count=ticks_before + 1, timeout=120)
    restarted = _restart_postgres_before_a_tick(chaos)
    last = time.monotonic()
    chaos.at(3, origin=last)
    chaos.term("worker1", "worker")
    chaos.at(9, origin=last)
    chaos.kill("worker1", "worker")
    if restarted is not None:
        _check_the_tick_after(chaos, *restarted)
    chaos.term("scheduler", "scheduler")


def _open_runs() -> int:
    with session_scope() as session:
        return len(
            session.scalars(select(Execution.id).where(Execution.status.in_(OPEN_STATUSES))).all()
        )


def _drain(schedule_ids: list[uuid.UUID]) -> None:
    """After the window, housekeeping every 2 s (as the minute tick would) until all is final."""

    def done() -> bool:
        periodic.recover_stranded(send_run)
        periodic.dispatch_due(send_run)
        with session_scope() as session:
            enabled = session.scalars(
                select(Schedule.id).where(Schedule.id.in_(schedule_ids), Schedule.enabled)
            ).all()
        return not enabled and _open_runs() == 0

    wait_for(done, timeout=180, interval=2, message="every schedule to end and every run to end")


def _instants(schedule_id: uuid.UUID, action: AuditAction) -> list[datetime]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(AuditLog.at)
                .where(AuditLog.target_id == schedule_id, AuditLog.action == action)
                .order_by(AuditLog.at)
            )
        )


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    repeated_in_flight: int = 0
    missed: int = 0  # slots counted missed, with a row or without

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.problems.append(message)


def _check_schedule(
    findings: Findings,
    name: str,
    schedule: Schedule,
    rows: list[Execution],
    called: set[tuple[str, str]],
    deleted_at: datetime | None,
) -> None:
    """Every slot of the schedule's timing that should run has one execution, which ran
    (or was skipped by a policy), or has none and is counted missed: the rows recorded
    missed and the slots with no row add up to `missed_count`."""
    timing = parse_timing(spec_of(schedule))
    assert schedule.start_at is not None and schedule.end_at is not None
    slots = list(slots_between(timing, schedule.start_at, schedule.end_at + TICK))
    paused = list(
        zip(
            _instants(schedule.id, AuditAction.PAUSE),
            _instants(schedule.id, AuditAction.RESUME),
            strict=False,
        )
    )
    by_slot: dict[datetime, list[Execution]] = {}
    for row in rows:
        by_slot.setdefault(row.scheduled_for, []).append(row)
    findings.check(set(by_slot) <= set(slots), f"{name}: rows for slots not in its timing")
    without_row: list[datetime] = []  # missed past the catch-up window: only counted
    for slot in slots:
        key = (str(schedule.id), slot.isoformat())
        found = by_slot.get(slot, [])
        in_pause = any(p < slot < r for p, r in paused)
        after_delete = deleted_at is not None and slot > deleted_at
        if in_pause or after_delete:
            findings.check(key not in called, f"{name}: {slot} called the agent (paused/deleted)")
            continue
        if deleted_at is not None:
            findings.check(len(found) <= 1, f"{name}: {slot} has {len(found)} executions")
            continue
        if not found:
            without_row.append(slot)
            continue
        # One execution, and it ran (or was skipped by a policy, with the reason):
        # a cancelled one is a slot that should have run and did not.
        statuses = [r.status for r in found]
        findings.check(
            len(found) == 1 and found[0].status in RAN,
            f"{name}: {slot} has executions {statuses}",
        )
    statuses = Counter(r.status for r in rows)
    missed = sum(1 for r in rows if (r.error or "").startswith("missed:"))
    overlap = sum(1 for r in rows if (r.error or "").endswith("(overlap policy)"))
    findings.missed += missed + len(without_row)
    counters = {
        "dispatched": (schedule.dispatched_count, len(rows) - missed),
        "run": (schedule.run_count, statuses["succeeded"] + statuses["failed"]),
        "success": (schedule.success_count, statuses["succeeded"]),
        "failure": (schedule.failure_count, statuses["failed"]),
        "skipped": (schedule.skipped_count, overlap),
    }
    for counter, (stored, counted) in counters.items():
        findings.check(stored == counted, f"{name}: {counter}_count {stored} != {counted} rows")
    no_row = ", ".join(f"{slot:%H:%M:%S}" for slot in without_row)
    findings.check(
        schedule.missed_count == missed + len(without_row),
        f"{name}: missed_count {schedule.missed_count} != {missed} row(s) recorded missed"
        f" + {len(without_row)} slot(s) with no row ({no_row})",
    )


def _history() -> tuple[list[Execution], dict[uuid.UUID, list[StepRun]]]:
    with session_scope() as session:
        rows = list(session.scalars(select(Execution).order_by(Execution.scheduled_for)))
        steps: dict[uuid.UUID, list[StepRun]] = {}
        for step in session.scalars(select(StepRun).order_by(StepRun.id)):
            steps.setdefault(step.execution_id, []).append(step)
        session.expunge_all()
    return rows, steps


def _recovery_times(
    faults: list[tuple[str, datetime]], rows: list[Execution], steps: dict[uuid.UUID, list[StepRun]]
) -> list[str]:
    """For each fault: the runs open then and due within 20 s (their messages may be lost
    or their worker gone), and the longest wait from the later of the fault and their
    due time until they next moved (a step started, or the run ended)."""
    lines = []
    for what, at in faults:
        waits = []
        for row in rows:
            due = row.available_at is not None and row.available_at <= at + timedelta(seconds=20)
            open_then = row.queued_at <= at and (row.finished_at is None or row.finished_at > at)
            if not (due and open_then) or row.available_at is None:
                continue
            since = max(at, row.available_at)
            moved = [s.started_at for s in steps.get(row.id, []) if s.started_at > since]
            if row.finished_at is not None:
                moved.append(row.finished_at)
            if moved:
                waits.append((min(moved) - since).total_seconds())
        slowest = f"{max(waits):.1f} s" if waits else "-"
        lines.append(f"  {what}: {len(waits)} run(s) open and due, moving again within {slowest}")
    return lines


@pytest.mark.timeout(900)
def test_chaos_every_slot_once_through_kills_flushes_outages_and_edits(
    own_procs: Any,
    own_postgres: OwnPostgres,
    agent: Any,
    redis_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given the Procfile's processes on a PostgreSQL of the test's own, eleven schedules
    # over a 220 s window, and a short misfire grace (here and in every process)
    monkeypatch.setenv("STEPWISE_MISFIRE_GRACE_S", str(MISFIRE_GRACE_S))
    get_settings.cache_clear()
    procs = own_procs
    rng = random.Random(SEED)
    recording = RecordingAgent(random.Random(SEED + 1))
    agent.responder = recording
    for key, name in (
        ("worker1", "worker"),
        ("worker2", "worker"),
        ("dispatcher", "dispatcher"),
        ("scheduler", "scheduler"),
    ):
        procs.start(name, as_name=key)
    for key in ("worker1", "worker2", "dispatcher"):
        procs.wait_ready(key, READY, timeout=90)
    procs.wait_ready("scheduler", TICK_SENT, timeout=90)  # it ticks as it starts
    ids = _schedules(agent.url, now() + timedelta(seconds=LEAD_S))
    periodic.dispatch_due(send_run)  # as the early dispatch after a create in the dashboard
    chaos = Chaos(procs, redis_client, own_postgres, rng)
    # when every kind of process is killed and restarted, the scheduler is down longer
    # than the dispatch horizon, PostgreSQL restarts, and people act meanwhile
    _timeline(chaos, ids)
    chaos.at(WINDOW_S + 5)
    _drain([i for group in ids.values() for i in group])
    # then the history holds exactly what the schedules' definitions promise
    rows, steps = _history()
    called = {
        (c.body.get("schedule_id"), c.body.get("scheduled_for"))
        for c in agent.calls
        if isinstance(c.body, dict)
    }
    findings = Findings(problems=list(chaos.problems))
    for name, group in ids.items():
        for schedule_id in group:
            schedule = fetch(Schedule, schedule_id)
            mine = [r for r in rows if r.schedule_id == schedule_id]
            deleted = _instants(schedule.automation_id, AuditAction.DELETE)
            deleted_at = deleted[0] if deleted else None
            _check_schedule(findings, name, schedule, mine, called, deleted_at)
    # no step answered 200 twice, unless it was in flight when its worker was killed
    for key, count in recording.answered.items():
        if count < 2:
            continue
        execution_id, step = key.rsplit(":", 1)
        lost = [
            s
            for s in steps.get(uuid.UUID(execution_id), [])
            if s.step_number == int(step) and s.error == LOST_STEP_ERROR
        ]
        findings.check(len(lost) >= count - 1, f"{key} answered 200 {count} times")
        findings.repeated_in_flight += count - 1
    # nothing is left queued or running, no step left running
    findings.check(_open_runs() == 0, "runs left open")
    open_steps = [s for ss in steps.values() for s in ss if s.status == "running"]
    findings.check(not open_steps, f"{len(open_steps)} step(s) left running")
    statuses = Counter(r.status for r in rows)
    print(
        f"\nchaos seed {SEED}: {len(rows)} executions {dict(statuses)}, "
        f"{findings.missed} slot(s) counted missed, {len(agent.calls)} agent calls, "
        f"{findings.repeated_in_flight} step(s) answered again after a SIGKILL mid-call"
    )
    print("\n".join([*chaos.notes, *_recovery_times(chaos.faults, rows, steps)]))
    assert findings.problems == [], "\n".join(findings.problems)
    assert statuses[ExecutionStatus.SUCCEEDED] > 0
    assert findings.missed > 0  # the outage made the misfire policies decide some slots
