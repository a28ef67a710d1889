"""The wake horizon: a run parked on a wait hours or days away leaves nothing in Redis (no
delayed message, none held by a worker); housekeeping's minute pass sends its wake-up once
its time comes within WAKE_HORIZON_S, exactly once; a resolution wakes it at once, and its
far wake-up is then never sent (docs/RELIABILITY.md, "Waits").

Real Dramatiq workers (in this process), a real HTTP agent on loopback, the suite's
PostgreSQL and Redis. Time passes by moving the rows' instants in the database, never by
sleeping.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from core.limits import WAKE_HORIZON_S
from core.vocabulary import ExecutionStatus
from db import recovery, runs
from db.claims import claim_executions
from db.models import Execution, Heartbeat, StepRun
from db.runs import Claim, RunMessage
from db.session import session_scope
from service import waits as wait_service
from tasks import periodic
from tasks.send import send_run
from testkit.factories import ADMIN, execution, make_execution, make_graph, now, step_runs
from testkit.processes import worker_in_process
from testkit.runs import ended
from testkit.waiting import wait_for
from testkit.waits import parked_run, wake_ups


def _far_sleep_graph(agent_url: str) -> uuid.UUID:
    """before → nap (a day's sleep) → after."""
    return make_graph(
        [
            {"key": "before", "message": "before"},
            {"key": "nap", "needs": ["before"], "kind": "sleep", "sleep_s": 86_400},
            {"key": "after", "needs": ["nap"], "message": "after"},
        ],
        agent_url=agent_url,
    )


def _far_started(automation_id: uuid.UUID) -> uuid.UUID:
    execution_id = make_execution(automation_id)
    send_run(RunMessage(execution_id, 0))
    return execution_id


def _far_parked(execution_id: uuid.UUID) -> Execution:
    parked: Execution = wait_for(
        lambda: (e := execution(execution_id)).status == "waiting" and e,
        timeout=30,
        message=f"execution {execution_id} to park",
        details=lambda: str([(r.step_key, r.status, r.error) for r in step_runs(execution_id)]),
    )
    return parked


def _held_by_workers(redis_client: Any, execution_id: uuid.UUID) -> int:
    """Messages for `execution_id` a worker fetched and has not acknowledged yet (Dramatiq's
    `__acks__` sets: a delayed message sits there, in the worker's memory, until its time)."""
    held = set().union(
        *(redis_client.smembers(k) for k in redis_client.scan_iter("dramatiq:__acks__.*"))
    )
    found = 0
    for queue in ("default", "default.DQ", "urgent", "urgent.DQ"):
        for message_id, data in redis_client.hgetall(f"dramatiq:{queue}.msgs").items():
            if message_id in held and str(execution_id).encode() in data:
                found += 1
    return found


def _nothing_in_redis_for(redis_client: Any, execution_id: uuid.UUID) -> bool:
    return wake_ups(redis_client, execution_id) == 0 and (
        _held_by_workers(redis_client, execution_id) == 0
    )


def _due_in(execution_id: uuid.UUID, key: str, seconds: float) -> None:
    """Make time pass: the run's wait of step `key` (and so its wake-up) ends `seconds` from
    the database's now, as if its day had gone by."""
    at = func.now() + timedelta(seconds=seconds)
    with session_scope() as session:
        session.execute(
            update(StepRun)
            .where(StepRun.execution_id == execution_id, StepRun.step_key == key)
            .values(wait_until=at)
        )
        session.execute(
            update(Execution).where(Execution.id == execution_id).values(available_at=at)
        )


def test_a_run_parked_beyond_the_horizon_leaves_nothing_in_redis_and_wakes_once_in_time(
    db: None, redis_client: Any, agent: Any
) -> None:
    # given a run parked in a day's sleep by a worker
    automation_id = _far_sleep_graph(agent.url)
    with worker_in_process(threads=2):
        execution_id = _far_started(automation_id)
        parked = _far_parked(execution_id)
        assert parked.lease_expires_at is None and parked.wake_sent_at is None
        assert parked.available_at is not None
        assert parked.available_at > now() + timedelta(seconds=WAKE_HORIZON_S)
        # then no wake-up is in Redis for it: none queued, none delayed, none held by a worker
        assert _nothing_in_redis_for(redis_client, execution_id)
        # and housekeeping's pass sends nothing while its time is far off
        assert periodic.send_wakes_due(send_run) == 0
        assert _nothing_in_redis_for(redis_client, execution_id)
        # when its time comes within the horizon (the day gone by: 2 s left)
        _due_in(execution_id, "nap", 2)
        # then the pass sends its wake-up, once: the next pass sends nothing more
        assert periodic.send_wakes_due(send_run) == 1
        assert execution(execution_id).wake_sent_at is not None
        assert periodic.send_wakes_due(send_run) == 0
        # and the run wakes at its time and completes, each step called once
        done = ended(execution_id, agent=agent)
    assert done.status == "succeeded", done.error
    assert done.attempt == 1  # a wake is not an attempt
    calls = [c.body["step_key"] for c in agent.calls_for(str(execution_id))]
    assert sorted(calls) == ["after", "before"]
    assert periodic.send_wakes_due(send_run) == 0
    assert _nothing_in_redis_for(redis_client, execution_id)


def test_a_resolution_wakes_a_far_parked_run_at_once_and_its_far_wake_up_is_never_sent(
    db: None, redis_client: Any, agent: Any
) -> None:
    # given a run parked on an approval of the default timeout (a day)
    automation_id = make_graph(
        [
            {"key": "ok", "kind": "approval", "message": "Publish?"},
            {"key": "publish", "needs": ["ok"], "message": "publish"},
        ],
        agent_url=agent.url,
    )
    with worker_in_process(threads=2):
        execution_id = _far_started(automation_id)
        _far_parked(execution_id)
        assert _nothing_in_redis_for(redis_client, execution_id)
        # when a duplicate wake-up comes early (a stray message)
        send_run(RunMessage.wake(execution_id, max_retries=3, retries=0, delay_ms=0, urgent=False))
        wait_for(lambda: _nothing_in_redis_for(redis_client, execution_id), timeout=10)
        # then it claims nothing: the run still waits, with no lease, on its first attempt
        still = execution(execution_id)
        assert (still.status, still.attempt, still.lease_expires_at) == ("waiting", 1, None)
        # when a person approves
        wait_service.decide(execution_id, "ok", approved=True, actor=ADMIN)
        # then the run wakes at once (no housekeeping) and completes
        done = ended(execution_id, agent=agent, timeout=20)
    assert done.status == "succeeded", done.error
    assert done.attempt == 1
    (publish,) = [c for c in agent.calls_for(str(execution_id)) if c.body["step_key"] == "publish"]
    assert publish.body["steps"]["ok"]["output"]["approved"] is True
    # and its far wake-up is never sent, even once the day has gone by
    _due_in(execution_id, "ok", -1)
    assert periodic.send_wakes_due(send_run) == 0
    assert _nothing_in_redis_for(redis_client, execution_id)


def test_a_park_sends_its_wake_up_only_within_the_horizon(db: None) -> None:
    # given two running runs whose open steps all wait: one a minute away, one an hour
    near_id, near_waits = parked_run(status=ExecutionStatus.QUEUED, until_s=60)
    far_id, far_waits = parked_run(status=ExecutionStatus.QUEUED, until_s=3600)
    with session_scope() as session:
        near, far = claim_executions(session, [near_id, far_id], lease_s=30)
    assert isinstance(near, Claim) and isinstance(far, Claim)
    # when their coordinators park them
    with session_scope() as session:
        near_park = runs.park(session, near, list(near_waits.values()))
        far_park = runs.park(session, far, list(far_waits.values()))
    # then the near one's wake-up is sent by the park (and recorded), the far one's is not
    assert near_park is not None and near_park.wake and near_park.delay_ms is not None
    assert far_park is not None and not far_park.wake and far_park.delay_ms is not None
    assert execution(near_id).wake_sent_at is not None
    assert execution(far_id).wake_sent_at is None


def test_two_horizon_passes_at_once_take_different_runs(db: None) -> None:
    # given two parked runs whose wake-ups were never sent, both due within the horizon
    ids = [parked_run(until_s=30)[0] for _ in range(2)]
    first: list[RunMessage] = []
    # when one pass holds a batch of one (not committed yet) while another runs
    with session_scope() as session:
        first = recovery.wakes_due(session, horizon_s=WAKE_HORIZON_S, limit=1)
        second: list[RunMessage] = []
        other = threading.Thread(
            target=lambda: second.extend(_one_pass(limit=10)), name="second-pass"
        )
        other.start()
        other.join(10)
    # then the second skips the locked run and takes the other; none is sent twice
    assert len(first) == 1 and len(second) == 1
    assert {first[0].execution_id, second[0].execution_id} == set(ids)
    assert 0 < first[0].delay_ms <= 30_000
    assert _one_pass(limit=10) == []


def _one_pass(*, limit: int) -> list[RunMessage]:
    with session_scope() as session:
        return recovery.wakes_due(session, horizon_s=WAKE_HORIZON_S, limit=limit)


def test_housekeepings_minute_tick_sends_the_wake_ups_now_within_the_horizon(
    db: None, redis_client: Any
) -> None:
    # given a run parked until 30 s from now whose wake-up was never sent, and one a day away
    near_id, _ = parked_run(until_s=30)
    far_id, _ = parked_run(until_s=86_400)
    # when housekeeping's minute tick runs
    periodic.tick_housekeeping(send_run)
    # then it sent the near one's wake-up (delayed to its time), recorded, and not the far one's
    assert wake_ups(redis_client, near_id) == 1 and wake_ups(redis_client, far_id) == 0
    assert execution(near_id).wake_sent_at is not None
    assert execution(far_id).wake_sent_at is None
    with session_scope() as session:
        details = session.execute(
            select(Heartbeat.details).where(Heartbeat.name == "housekeeping")
        ).scalar_one()
    assert details["wakes_sent"] == 1
    # and the next tick sends nothing again
    periodic.tick_housekeeping(send_run)
    assert wake_ups(redis_client, near_id) == 1
