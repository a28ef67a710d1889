"""The minute ticks (dispatch, housekeeping, notify) right after a PostgreSQL restart, in a
process that pings no pooled connection before use (as every Dramatiq process).

Each test starts its own embedded PostgreSQL (`testkit.servers.OwnPostgres`, its own port
and data directory), migrated, with this process's settings pointed at it; the machine's
server is never touched. The tick after the restart must do its work at once, not leave
it to the next minute's tick.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from db.models import Execution, Heartbeat, Schedule
from db.runs import RunMessage
from db.session import db_now, ping_before_use, session_scope
from tasks import notify, periodic
from testkit.factories import make_automation, make_schedule
from testkit.servers import OwnPostgres


@pytest.fixture
def no_pre_ping(own_postgres: OwnPostgres) -> Iterator[OwnPostgres]:
    """The test's own PostgreSQL, used without pre-ping."""
    ping_before_use(False)  # as `tasks.lifecycle.RunnerLifecycle.after_worker_boot`
    yield own_postgres
    ping_before_use(True)


def _due_schedule() -> object:
    """An interval-10 s schedule whose slots of the last 30 s no dispatch reached yet."""
    schedule_id = make_schedule(make_automation(steps=1), kind="interval", interval_s=10)
    with session_scope() as session:
        behind = db_now(session) - timedelta(seconds=30)
        session.execute(
            update(Schedule).where(Schedule.id == schedule_id).values(next_run_at=behind)
        )
    return schedule_id


def _beat(name: str) -> object:
    with session_scope() as session:
        beat = session.get(Heartbeat, name)
        return None if beat is None else beat.at


def test_the_dispatch_tick_after_a_restart_queues_the_due_slots_at_once(
    no_pre_ping: OwnPostgres,
) -> None:
    # given a dispatcher whose tick worked (its pool holds connections)
    sent: list[RunMessage] = []
    periodic.tick_dispatch(sent.append)
    # and a schedule with due slots no dispatch reached
    schedule_id = _due_schedule()
    # when PostgreSQL restarts (every pooled connection cut) and the next tick comes
    no_pre_ping.restart(down_s=1)
    began = time.monotonic()
    periodic.tick_dispatch(sent.append)
    # then that tick queued the due slots, within seconds
    assert time.monotonic() - began < 10
    with session_scope() as session:
        queued = session.scalars(
            select(Execution.id).where(Execution.schedule_id == schedule_id)
        ).all()
    assert len(queued) >= 3  # the slots of the last 30 s (by the misfire policy) and ahead
    assert set(queued) <= {m.execution_id for m in sent}


def test_the_housekeeping_tick_after_a_restart_does_its_pass(no_pre_ping: OwnPostgres) -> None:
    # given housekeeping whose tick worked
    periodic.tick_housekeeping(lambda message: None)
    before = _beat("housekeeping")
    # when PostgreSQL restarts and the next tick comes
    no_pre_ping.restart(down_s=1)
    periodic.tick_housekeeping(lambda message: None)
    # then that tick made its pass
    after = _beat("housekeeping")
    assert before is not None and after is not None and after != before


def test_the_notify_tick_after_a_restart_does_its_pass(no_pre_ping: OwnPostgres) -> None:
    # given the notify tick worked
    notify.tick_notify()
    before = _beat("notify")
    # when PostgreSQL restarts and the next tick comes
    no_pre_ping.restart(down_s=1)
    notify.tick_notify()
    # then that tick made its pass
    after = _beat("notify")
    assert before is not None and after is not None and after != before
