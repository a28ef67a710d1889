"""Fault test 10 (bad input through the `db` write functions) and retention housekeeping.

Every rejected input must name its field with a message a person can act on and
leave every table exactly as it was (rows and contents, `table_snapshot()`).
The dashboard form calls these same functions; its own rendering of the
messages is tested with the dashboard (tests/test_dashboard.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.orm import Session

from core.automation import Step
from core.errors import InvalidState, NotFound, StepwiseError, ValidationFailed
from core.schedule import ScheduleInput
from core.settings import get_settings
from core.timing import ScheduleSpec
from db import automations, executions, schedules
from db.models import Execution, StepRun
from db.recovery import purge_history
from db.runs import RunMessage
from db.session import get_engine, session_scope
from tasks import periodic
from tasks.send import send_run
from testkit.factories import (
    ADMIN,
    automation_input,
    execution,
    make_automation,
    make_execution,
    make_schedule,
    row_counts,
    schedule_definition,
    table_snapshot,
)
from testkit.waiting import wait_for

T0 = datetime(2030, 1, 1, tzinfo=UTC)

# --- 10. bad input -----------------------------------------------------------------

BAD_AUTOMATIONS: list[tuple[dict[str, Any], str, str]] = [
    ({"concurrency_limit": 0}, "concurrency_limit", "between 1 and 1000, or empty"),
    ({"concurrency_limit": 1001}, "concurrency_limit", "between 1 and 1000, or empty"),
    ({"rate_limit_per_s": 0}, "rate_limit_per_s", "between 0.01 and 1000 calls per second"),
    ({"rate_limit_per_s": float("nan")}, "rate_limit_per_s", "between 0.01 and 1000"),
    ({"rate_limit_per_s": 1e9}, "rate_limit_per_s", "between 0.01 and 1000"),
    ({"steps": 0}, "steps", "add at least one step"),
    ({"steps": 51}, "steps", "at most 50 steps (got 51)"),
    ({"steps": (Step("a", "  "),)}, "steps", "step 1 has no message"),
    ({"steps": (Step("a", "x" * 20_001),)}, "steps", "over 20000 characters"),
    ({"steps": (Step("n" * 201, "m"),)}, "steps", "name is over 200 characters"),
    ({"agent_url": "ftp://agent/x"}, "agent_url", "must start with http:// or https://"),
    ({"agent_url": "javascript:alert(1)"}, "agent_url", "must start with http:// or https://"),
    ({"agent_url": "http://"}, "agent_url", "has no host name"),
    ({"agent_url": ""}, "agent_url", "is required"),
    ({"agent_url": "http://a/" + "x" * 2000}, "agent_url", "longer than 2000"),
    ({"name": "   "}, "name", "is required"),
    ({"name": "x" * 201}, "name", "longer than 200"),
    ({"description": "x" * 100_001}, "description", "longer than 100000"),
    ({"project_context": "x" * 100_001}, "project_context", "longer than 100000"),
    ({"step_timeout_s": 0}, "step_timeout_s", "between 1 and 3600"),
    ({"step_timeout_s": 3601}, "step_timeout_s", "between 1 and 3600"),
    ({"max_retries": -1}, "max_retries", "between 0 and 20"),
    ({"max_retries": 21}, "max_retries", "between 0 and 20"),
]

BAD_SCHEDULES: list[tuple[dict[str, Any], dict[str, Any], str, str]] = [
    ({"kind": "cron", "cron_expr": "0 25 * * *"}, {}, "cron_expr", "hour 25 is out of range"),
    ({"kind": "cron", "cron_expr": "* * *"}, {}, "cron_expr", "expected 5 fields"),
    ({"kind": "cron", "cron_expr": "0 0 31 2 *"}, {}, "cron_expr", "never occurs"),
    ({"kind": "cron", "cron_expr": ""}, {}, "cron_expr", "is required"),
    (
        {"kind": "cron", "cron_expr": "0 9 * * *", "timezone": "Mars/Olympus"},
        {},
        "timezone",
        "unknown timezone 'Mars/Olympus'",
    ),
    ({"kind": "interval", "interval_s": 9}, {}, "interval_s", "at least 10 seconds"),
    ({"kind": "weekly"}, {}, "kind", "unknown kind"),
    ({"kind": "once"}, {}, "run_at", "is required"),
    ({"kind": "once", "run_at": datetime(2030, 1, 1)}, {}, "run_at", "must include a timezone"),
    (
        {"kind": "interval", "interval_s": 60, "start_at": T0 + timedelta(days=1), "end_at": T0},
        {},
        "end_at",
        "must be after the start",
    ),
    ({"kind": "interval", "interval_s": 60, "max_runs": 0}, {}, "max_runs", "at least 1"),
    ({"kind": "interval", "interval_s": 60}, {"misfire_policy": "x"}, "misfire_policy", "one of"),
    ({"kind": "interval", "interval_s": 60}, {"overlap_policy": "y"}, "overlap_policy", "one of"),
    (
        {"kind": "interval", "interval_s": 60},
        {"catchup_window_s": 8 * 86400},
        "catchup_window_s",
        "between 0 and 604800",
    ),
    ({"kind": "interval", "interval_s": 60}, {"jitter_s": 3601}, "jitter_s", "between 0 and 3600"),
]


def _rejected(call: Callable[[Session], Any], error: type[StepwiseError]) -> StepwiseError:
    """Run `call` in one transaction, expecting `error`; the database must not change."""
    before = table_snapshot()
    with pytest.raises(error) as raised, session_scope() as session:
        call(session)
    assert table_snapshot() == before
    return raised.value


@pytest.fixture
def world(db: None) -> dict[str, uuid.UUID]:
    """Some existing state that a rejected input must leave alone."""
    automation_id = make_automation()
    schedule_id = make_schedule(automation_id, kind="interval", interval_s=60)
    done = make_execution(automation_id, status="succeeded")
    return {"automation": automation_id, "schedule": schedule_id, "succeeded": done}


@pytest.mark.parametrize(("overrides", "field", "message"), BAD_AUTOMATIONS)
def test_bad_automations_are_rejected_on_create_and_edit(
    world: dict[str, uuid.UUID], overrides: dict[str, Any], field: str, message: str
) -> None:
    data = automation_input(**overrides)
    for call in (
        lambda s: automations.create_automation(s, data, actor=ADMIN),
        lambda s: automations.update_automation(s, world["automation"], data, actor=ADMIN),
    ):
        error = _rejected(call, ValidationFailed)
        assert isinstance(error, ValidationFailed)
        assert message in (error.for_field(field) or ""), error.errors


@pytest.mark.parametrize(("spec", "options", "field", "message"), BAD_SCHEDULES)
def test_bad_schedules_are_rejected_on_create_and_edit(
    world: dict[str, uuid.UUID],
    spec: dict[str, Any],
    options: dict[str, Any],
    field: str,
    message: str,
) -> None:
    data = ScheduleInput(spec=ScheduleSpec(**spec), **options)
    # The dashboard and the API parse before the command; the command trusts the result.
    for call in (
        lambda s: schedules.create_schedule(
            s, world["automation"], schedule_definition(data), actor=ADMIN
        ),
        lambda s: schedules.update_schedule(
            s, world["schedule"], schedule_definition(data), actor=ADMIN
        ),
    ):
        error = _rejected(call, ValidationFailed)
        assert isinstance(error, ValidationFailed)
        assert message in (error.for_field(field) or ""), error.errors


def test_actions_on_missing_or_finished_things_are_refused(world: dict[str, uuid.UUID]) -> None:
    good = schedule_definition(ScheduleInput(spec=ScheduleSpec(kind="interval", interval_s=60)))
    ghost = uuid.uuid4()
    refused: list[tuple[Callable[[Session], Any], type[StepwiseError], str]] = [
        (lambda s: schedules.create_schedule(s, ghost, good, actor=ADMIN), NotFound, "does not"),
        (lambda s: schedules.update_schedule(s, ghost, good, actor=ADMIN), NotFound, "does not"),
        (lambda s: executions.create_manual_execution(s, ghost, actor=ADMIN), NotFound, "does not"),
        (
            lambda s: executions.cancel_execution(s, world["succeeded"], actor=ADMIN),
            InvalidState,
            "only queued or running executions can be cancelled (this one is succeeded)",
        ),
        (
            lambda s: executions.retry_execution(s, world["succeeded"], actor=ADMIN),
            InvalidState,
            "only failed or cancelled executions can be retried (this one is succeeded)",
        ),
        (lambda s: executions.cancel_execution(s, ghost, actor=ADMIN), NotFound, "does not exist"),
    ]
    for call, error, message in refused:
        assert message in str(_rejected(call, error))


def test_a_deleted_automation_refuses_new_work_and_its_queued_runs_end_cancelled(
    worker: Any, agent: Any
) -> None:
    # given an automation with a schedule and a queued run whose message is in flight
    automation_id = make_automation(agent_url=agent.url)
    schedule_id = make_schedule(automation_id, kind="interval", interval_s=60)
    queued = make_execution(automation_id)
    with session_scope() as session:
        automations.delete_automation(session, automation_id, actor=ADMIN)
    send_run(RunMessage(queued, 3))
    # then the run ends cancelled with its reason, and the agent is never called
    wait_for(lambda: execution(queued).status == "cancelled", message="the cancelled run")
    time.sleep(0.5)
    assert "automation was deleted" in (execution(queued).error or "")
    assert agent.calls == []
    # and nothing can be started or resumed on it any more
    good = schedule_definition(ScheduleInput(spec=ScheduleSpec(kind="interval", interval_s=60)))
    _rejected(lambda s: executions.create_manual_execution(s, automation_id, actor=ADMIN), NotFound)
    _rejected(lambda s: schedules.create_schedule(s, automation_id, good, actor=ADMIN), NotFound)
    _rejected(lambda s: schedules.resume_schedule(s, schedule_id, actor=ADMIN), NotFound)
    _rejected(
        lambda s: automations.update_automation(s, automation_id, automation_input(), actor=ADMIN),
        NotFound,
    )


# --- retention ---------------------------------------------------------------------


def _age(ids: list[uuid.UUID], days: int, status: str = "succeeded") -> None:
    with session_scope() as session:
        session.execute(
            update(Execution)
            .where(Execution.id.in_(ids))
            .values(status=status, queued_at=func.now() - timedelta(days=days))
        )


def _with_steps(automation_id: uuid.UUID, n: int) -> list[uuid.UUID]:
    ids = [make_execution(automation_id) for _ in range(n)]
    with session_scope() as session:
        session.add_all(
            StepRun(execution_id=i, step_number=1, attempt=1, status="succeeded", request={})
            for i in ids
        )
    return ids


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("STEPWISE_RETENTION_BATCH", "7")
    get_settings.cache_clear()
    yield get_settings()
    monkeypatch.undo()
    get_settings.cache_clear()


def test_retention_deletes_only_old_finished_history_in_batches(
    db: None, small_batches: Any
) -> None:
    # given 30 finished executions past the 90-day retention (with their steps), and
    # recent ones, and old ones that are still open
    automation_id = make_automation()
    old = _with_steps(automation_id, 30)
    _age(old[:20], 91, "succeeded")
    _age(old[20:], 200, "failed")
    recent = _with_steps(automation_id, 5)
    _age(recent, 89)
    still_queued = make_execution(automation_id)
    _age([still_queued], 120, "queued")
    still_running = make_execution(automation_id)
    _age([still_running], 120, "running")
    # when housekeeping purges, in batches of 7
    statements: list[str] = []
    from sqlalchemy import event

    def spy(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "DELETE FROM EXECUTIONS" in statement.upper():  # after the batch's WITH
            statements.append(statement)

    event.listen(get_engine(), "before_cursor_execute", spy)
    try:
        assert periodic.purge_old_history() == 30
    finally:
        event.remove(get_engine(), "before_cursor_execute", spy)
    # then it took ceil(30 / 7) short transactions (the last, short batch ends the loop)
    assert len(statements) == 5
    # and only old finished rows went, their step runs with them
    with session_scope() as session:
        left = set(session.scalars(select(Execution.id)))
        orphans = session.scalar(
            select(func.count()).select_from(StepRun).where(StepRun.execution_id.in_(old))
        )
    assert left == {*recent, still_queued, still_running}
    assert orphans == 0
    assert periodic.purge_old_history() == 0


def test_a_purge_batch_never_blocks_the_workers_or_another_purger(db: None) -> None:
    # given old history and a live execution
    automation_id = make_automation()
    old = [make_execution(automation_id) for _ in range(20)]
    _age(old, 100)
    live = make_execution(automation_id)
    # when one purge batch holds its locks (transaction left open)
    engine = create_engine(get_settings().database_url)
    holder = engine.connect()
    tx = holder.begin()
    with Session(bind=holder) as held:
        assert purge_history(held, older_than_days=90, batch=10) == 10
        # then a worker's writes and a second purger go through without waiting
        with Session(bind=engine) as session, session.begin():
            session.execute(text("SET LOCAL lock_timeout = '1s'"))
            session.execute(update(Execution).where(Execution.id == live).values(status="running"))
            executions.create_manual_execution(session, automation_id, actor=ADMIN)
            assert purge_history(session, older_than_days=90, batch=100) == 10  # the others
    tx.rollback()
    holder.close()
    engine.dispose()
    assert row_counts()["executions"] == 10 + 1 + 1
