"""Fault tests on the servers: Redis loses everything (3), Postgres restarts (4).

The machine's shared servers are never touched: each test starts its own
embedded Redis or PostgreSQL (`stepwise.embedded`) on its own data directory and
points the Procfile processes at it through REDIS_URL / DATABASE_URL. The test's
own side is pointed there too (the broker used by `send_run` and
`recover_stranded`, or the settings behind `db.session`).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import func, select, update

import tasks.send
from db.models import Execution, Heartbeat, StepRun
from db.runs import RunMessage
from db.session import db_now, session_scope
from stepwise import embedded
from stepwise.demo_agent import Reply
from tasks import periodic
from tasks.send import send_run
from testkit.factories import make_automation, make_execution, make_schedule
from testkit.servers import OwnPostgres
from testkit.waiting import wait_for

pytestmark = pytest.mark.slow
READY = "Worker process is ready for action"
FINAL = ("succeeded", "failed", "cancelled", "skipped")


def _statuses(ids: list[uuid.UUID]) -> Counter[str]:
    with session_scope() as session:
        return Counter(session.scalars(select(Execution.status).where(Execution.id.in_(ids))))


def _recover_until_final(ids: list[uuid.UUID], timeout: float) -> float:
    """Run housekeeping every second (the scheduler does it every minute) until all end."""
    began = time.monotonic()

    def done() -> bool:
        periodic.recover_stranded(send_run)
        statuses = _statuses(ids)
        return sum(statuses[s] for s in FINAL) == len(ids)

    wait_for(done, timeout=timeout, interval=1, message=f"{len(ids)} executions to end")
    return time.monotonic() - began


def _queue(automation_id: uuid.UUID, *, now: int, delayed: int, delay_s: int) -> list[uuid.UUID]:
    """`now` runs due at once and `delayed` ones due in `delay_s`, their messages sent."""
    ids = [make_execution(automation_id) for _ in range(now + delayed)]
    later = ids[now:]
    with session_scope() as session:
        session.execute(
            update(Execution)
            .where(Execution.id.in_(later))
            .values(available_at=func.now() + timedelta(seconds=delay_s))
        )
    for execution_id in ids:
        delay_ms = delay_s * 1000 if execution_id in later else 0
        send_run(RunMessage(execution_id, 3, delay_ms=delay_ms))
    return ids


# --- 3. Redis loses everything -------------------------------------------------------


class OwnRedis:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = embedded.free_port()
        self.server = embedded.start_redis(data_dir, self.port, persist=False)

    @property
    def url(self) -> str:
        return self.server.url

    def restart(self, down_s: float) -> None:
        """Stop Redis, wait, start it again: without persistence it comes back empty."""
        self.server.stop()
        time.sleep(down_s)  # the outage itself; nothing to poll for
        self.server = embedded.start_redis(self.data_dir, self.port, persist=False)


@pytest.fixture
def own_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "own-redis")
    # `send_run` (and so `recover_stranded`) must send where the workers listen.
    own_broker = RedisBroker(url=server.url, middleware=[])
    monkeypatch.setattr(tasks.send, "setup_broker", lambda: own_broker)
    yield server
    own_broker.close()
    server.server.stop()


@pytest.mark.parametrize("fault", ["flushdb", "restart"])
def test_redis_losing_every_message_loses_no_execution(
    procs: Any, agent: Any, own_redis: OwnRedis, fault: str
) -> None:
    # given a worker on its own Redis, busy with a backlog of runs and delayed runs
    agent.responder = lambda call: Reply(200, {"output": "ok"}, delay_s=0.3)
    automation_id = make_automation(agent_url=agent.url, steps=2, step_timeout_s=5)
    procs.start("worker", REDIS_URL=own_redis.url, STEPWISE_WORKER_THREADS="2")
    procs.wait_ready("worker", READY)
    ids = _queue(automation_id, now=16, delayed=6, delay_s=8)
    wait_for(lambda: len(agent.calls) >= 2, message="runs in flight")
    # when Redis loses every queued and delayed message
    if fault == "flushdb":
        redis.Redis.from_url(own_redis.url).flushdb()
    else:
        own_redis.restart(down_s=2)
    fault_at = time.monotonic()
    # then, with housekeeping running, every execution completes
    recovery_s = _recover_until_final(ids, timeout=120)
    assert _statuses(ids) == {"succeeded": len(ids)}
    # and none ran twice: each step's key reached the agent once, one attempt each
    keys = Counter(c.idempotency_key for c in agent.calls)
    assert len(keys) == 2 * len(ids) and set(keys.values()) == {1}
    with session_scope() as session:
        attempts = Counter(session.scalars(select(Execution.attempt).where(Execution.id.in_(ids))))
        running_steps = session.scalar(
            select(func.count()).select_from(StepRun).where(StepRun.status == "running")
        )
    assert attempts == {1: len(ids)} and running_steps == 0
    # and the worker survived it (it reconnected on its own)
    assert procs.running["worker"].poll() is None
    print(
        f"\nRedis {fault}: {len(ids)} executions all succeeded, "
        f"{recovery_s:.1f} s to recover ({time.monotonic() - fault_at:.1f} s after the fault)"
    )


# --- 4. Postgres restarts ------------------------------------------------------------


def _beat_after(name: str, instant: Any) -> bool:
    with session_scope() as session:
        beat = session.get(Heartbeat, name)
        return beat is not None and beat.at > instant


@pytest.mark.timeout(420)
def test_a_postgres_restart_mid_run_loses_nothing(
    procs: Any, agent: Any, own_postgres: OwnPostgres
) -> None:
    # given workers, a dispatcher and a scheduler on their own PostgreSQL
    agent.responder = lambda call: Reply(200, {"output": "ok"}, delay_s=0.3)
    automation_id = make_automation(agent_url=agent.url, steps=3, step_timeout_s=10)
    env = {"DATABASE_URL": own_postgres.url, "STEPWISE_WORKER_THREADS": "4"}
    procs.start("worker", **env)
    procs.start("dispatcher", **env)
    procs.wait_ready("worker", READY)
    procs.wait_ready("dispatcher", READY)
    # and a schedule every 10 s for one minute, plus 20 manual runs in flight
    with session_scope() as session:
        start = db_now(session).replace(microsecond=0) + timedelta(seconds=5)
    schedule_id = make_schedule(
        automation_id,
        kind="interval",
        interval_s=10,
        start_at=start,
        end_at=start + timedelta(seconds=59),
        overlap_policy="allow",
    )
    procs.start("scheduler", **env)
    manual = _queue(automation_id, now=20, delayed=0, delay_s=0)
    wait_for(lambda: len(agent.calls) >= 10, message="runs in flight")
    # when PostgreSQL restarts under them (every connection cut, 3 s down)
    own_postgres.restart(down_s=3)
    with session_scope() as session:
        back_at = db_now(session)
    # then every manual run completes (housekeeping driven every second)
    recovery_s = _recover_until_final(manual, timeout=120)
    # and the dispatcher and housekeeping ran again on their own, at the next tick
    wait_for(
        lambda: _beat_after("dispatch", back_at) and _beat_after("housekeeping", back_at),
        timeout=90,
        interval=1,
        message="a scheduler tick handled after the restart",
    )
    # and the schedule's six slots each ran exactly once
    with session_scope() as session:
        slots = session.execute(
            select(Execution.id, Execution.scheduled_for)
            .where(Execution.schedule_id == schedule_id)
            .order_by(Execution.scheduled_for)
        ).all()
    assert [s.scheduled_for for s in slots] == [start + timedelta(seconds=10 * k) for k in range(6)]
    everything = manual + [s.id for s in slots]
    wait_for(
        lambda: (
            periodic.recover_stranded(send_run) >= 0
            and _statuses(everything) == {"succeeded": len(everything)}
        ),
        timeout=90,
        interval=1,
        message=f"all runs to succeed: {_statuses(everything)}",
    )
    # and no step result was lost: each step succeeded exactly once, none left running
    with session_scope() as session:
        succeeded = Counter(
            session.execute(
                select(StepRun.execution_id, StepRun.step_number).where(
                    StepRun.status == "succeeded"
                )
            ).all()
        )
        running_steps = session.scalar(
            select(func.count()).select_from(StepRun).where(StepRun.status == "running")
        )
    assert set(succeeded) == {(e, n) for e in everything for n in (1, 2, 3)}
    assert set(succeeded.values()) == {1} and running_steps == 0
    # and every answer the agent gave was kept: no step was called a second time
    recalled = sum(n - 1 for n in Counter(c.idempotency_key for c in agent.calls).values())
    assert recalled == 0
    print(
        f"\nPostgres restart: {len(everything)} executions succeeded, manual runs done "
        f"{recovery_s:.1f} s after the restart; {recalled} step call(s) repeated "
        "with the same Idempotency-Key"
    )
