"""Behind PgBouncer in transaction mode (Debian's 1.18, which keeps no prepared statement
for a client): psycopg's prepared statements break there, and with
STEPWISE_DB_PREPARE_THRESHOLD empty the Procfile's worker and dispatcher run through it.

Each test starts its own PgBouncer (`testkit.pgbouncer`) in front of the test database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import ProgrammingError

from core.settings import get_settings
from db.models import Execution, StepRun
from db.session import db_now, dispose_engine, get_engine, session_scope
from tasks.actors import dispatch
from testkit.factories import make_automation, make_schedule
from testkit.pgbouncer import pgbouncer
from testkit.processes import READY
from testkit.waiting import wait_for

RUNS = 50


@pytest.fixture
def through(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`through(url, threshold)`: this process's engine on `url` with that prepare
    threshold (None: the default); the test database's settings again afterwards."""

    def point(url: str, threshold: str | None) -> None:
        monkeypatch.setenv("DATABASE_URL", url)
        if threshold is None:
            monkeypatch.delenv("STEPWISE_DB_PREPARE_THRESHOLD", raising=False)
        else:
            monkeypatch.setenv("STEPWISE_DB_PREPARE_THRESHOLD", threshold)
        get_settings.cache_clear()
        dispose_engine()

    yield point
    monkeypatch.undo()
    get_settings.cache_clear()
    dispose_engine()


@pytest.mark.parametrize("threshold", [None, "none"])
def test_prepared_statements_break_behind_pgbouncer_in_transaction_mode_unless_turned_off(
    database_url: str, tmp_path: Path, through: Any, threshold: str | None
) -> None:
    with pgbouncer(database_url, tmp_path / "pgbouncer", pool_size=1) as bouncer:
        # given the engine through PgBouncer, the prepare threshold at its default or off
        through(bouncer.url(database_url), threshold)
        statement = text("SELECT CAST(:n AS int) + 1")

        def repeated() -> None:
            # two pooled connections, each running a statement more than 5 times; PgBouncer
            # gives each transaction whichever server connection is free (here, its one)
            with get_engine().connect() as a, get_engine().connect() as b:
                for n in range(8):
                    for conn in (a, b):
                        assert conn.execute(statement, {"n": n}).scalar() == n + 1
                        conn.commit()

        if threshold is None:
            # then psycopg prepares it on each, and the second finds the first's name taken
            with pytest.raises(ProgrammingError) as failed:
                repeated()
            assert isinstance(failed.value.orig, psycopg.errors.DuplicatePreparedStatement)
            assert 'prepared statement "_pg3_0" already exists' in str(failed.value)
        else:
            # then it never prepares, and every statement runs
            repeated()


@pytest.mark.slow
def test_the_real_processes_run_through_pgbouncer_in_transaction_mode(
    procs: Any, agent: Any, database_url: str, tmp_path: Path
) -> None:
    with pgbouncer(database_url, tmp_path / "pgbouncer", pool_size=2) as bouncer:
        # given a 3-step automation and 50 runs due in a few seconds: half one-off slots,
        # half first slots of interval schedules (their overlap check takes an advisory lock)
        automation_id = make_automation(agent_url=agent.url, steps=3)
        with session_scope() as session:
            due = db_now(session) + timedelta(seconds=5)
        schedules = [make_schedule(automation_id, kind="once", run_at=due) for _ in range(25)]
        schedules += [
            make_schedule(automation_id, kind="interval", interval_s=3600, start_at=due, max_runs=1)
            for _ in range(RUNS - 25)
        ]
        # when the Procfile's worker and dispatcher reach PostgreSQL only through PgBouncer,
        # psycopg never preparing, and a dispatch tick arrives
        through = {"DATABASE_URL": bouncer.url(database_url), "STEPWISE_DB_PREPARE_THRESHOLD": ""}
        procs.start("worker", **through)
        procs.start("dispatcher", **through)
        procs.wait_ready("worker", READY)
        procs.wait_ready("dispatcher", READY)
        dispatch.send()

        # then every run succeeds, each of its 3 steps called once
        def statuses() -> Counter[str]:
            with session_scope() as session:
                return Counter(
                    session.scalars(
                        select(Execution.status).where(Execution.schedule_id.in_(schedules))
                    )
                )

        wait_for(
            lambda: statuses()["succeeded"] == RUNS,
            timeout=120,
            interval=0.5,
            message=f"{RUNS} runs to succeed through PgBouncer",
            details=lambda: f"{statuses()}\n{procs.log('worker')[-3000:]}",
        )
        with session_scope() as session:
            ids = list(
                session.scalars(select(Execution.id).where(Execution.schedule_id.in_(schedules)))
            )
            steps = Counter(
                session.execute(
                    select(StepRun.execution_id, StepRun.status).where(
                        StepRun.execution_id.in_(ids)
                    )
                ).all()
            )
        assert len(ids) == RUNS
        assert steps == {(execution_id, "succeeded"): 3 for execution_id in ids}
        keys = Counter(call.idempotency_key for call in agent.calls)
        assert keys == {f"{execution_id}:{n}": 1 for execution_id in ids for n in (1, 2, 3)}
        # and both processes logged in through PgBouncer, and logged no error up to their end
        name = database_url.rsplit("/", 1)[-1].split("?")[0]
        assert bouncer.log().count(f"login attempt: db={name}") >= 2
        for key in ("worker", "dispatcher"):
            procs.stop(key)
            log = procs.log(key)
            for marker in ("ERROR", "CRITICAL", "Traceback", "prepared statement"):
                at = log.find(marker)
                assert at < 0, f"{key}: {log[max(0, at - 1500) : at + 1500]}"
