"""The schema and the database side of dispatch, runs and housekeeping."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, func, inspect, select, text, update
from sqlalchemy.exc import IntegrityError

from core.errors import ValidationFailed
from core.limits import (
    MAX_CONCURRENCY,
    MAX_JITTER_S,
    MAX_RATE_PER_S,
    MAX_RETRIES,
    MAX_STEP_TIMEOUT_S,
    MAX_STEPS,
    MIN_INTERVAL_S,
    MIN_RATE_PER_S,
)
from core.schedule import ScheduleInput
from core.timing import ScheduleSpec, spec_of
from core.vocabulary import AuditAction, CompletedReason, MisfirePolicy
from db import automations, executions, schedules
from db.audit import AuditFilters, list_audit
from db.claims import claim_execution
from db.dispatch import DispatchConfig, dispatch_batch
from db.models import Automation, Base, Execution, Schedule
from db.recovery import purge_history, stranded_executions
from db.session import db_now, session_scope
from service import automations as service_automations
from service import schedules as service_schedules
from stepwise.cli import migrate
from testkit.factories import (
    ADMIN,
    automation_input,
    execution,
    executions_of,
    fetch,
    make_automation,
    make_execution,
    make_schedule,
    now,
    person,
    schedule_definition,
    step_runs,
    table_snapshot,
)
from testkit.waiting import wait_for

CONFIG = DispatchConfig(horizon_s=90, grace_s=60, batch=100)


def test_migrations_build_the_schema_and_tear_it_down(create_database: Callable[[], str]) -> None:
    from alembic.config import Config

    from alembic import command

    # given an empty database
    url = create_database()
    engine = create_engine(url)
    assert inspect(engine).get_table_names() == []
    # when migrated up
    migrate(url)
    tables = set(inspect(engine).get_table_names())
    assert {
        "automations",
        "schedules",
        "executions",
        "step_runs",
        "audit_log",
        "heartbeats",
    } <= tables
    # the slot key: unique over the runs that take a slot (a run by hand takes none)
    slot_key = {i["name"]: i for i in inspect(engine).get_indexes("executions")}[
        "uq_executions_slot"
    ]
    assert slot_key["unique"] and slot_key["column_names"] == ["schedule_id", "scheduled_for"]
    assert "manual" in str(slot_key["dialect_options"]["postgresql_where"])
    index_names = {i["name"] for i in inspect(engine).get_indexes("schedules")}
    assert "ix_schedules_due" in index_names
    # then down to base leaves only alembic's own table, and up works again
    config = Config("alembic.ini")
    config.attributes["url"] = url
    config.attributes["configure_logging"] = False
    command.downgrade(config, "base")
    engine.dispose()
    assert set(inspect(create_engine(url)).get_table_names()) <= {"alembic_version"}
    migrate(url)
    assert "executions" in inspect(create_engine(url)).get_table_names()


def test_the_completed_reasons_migration_maps_the_texts_earlier_versions_wrote(
    create_database: Callable[[], str],
) -> None:
    from alembic.config import Config

    from alembic import command

    # given schedules stopped with every text earlier versions wrote, at revision 0013
    url = create_database()
    config = Config("alembic.ini")
    config.attributes["url"] = url
    config.attributes["configure_logging"] = False
    command.upgrade(config, "0013")
    written = [
        "disabled: 'No time zone found with key Gone/Away'",
        "end_at reached",
        "max_runs reached",
        "run_at has passed",
        "ran once",
        "reached its end",
        "automation deleted",
        None,
    ]
    engine = create_engine(url)
    workspace, automation = uuid.uuid4(), uuid.uuid4()
    ids = [uuid.uuid4() for _ in written]
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO workspaces (id, name) VALUES (:w, 'w')"), {"w": workspace})
        conn.execute(
            text(
                "INSERT INTO automations (id, workspace_id, owner_id, name, description, steps,"
                " project_context, agent_url, step_timeout_s, max_retries) VALUES (:a, :w, 'o',"
                " 'a', '', :steps, '', 'http://agent', 30, 3)"
            ),
            {"a": automation, "w": workspace, "steps": '[{"name": "s", "message": "m"}]'},
        )
        for schedule_id, reason in zip(ids, written, strict=True):
            conn.execute(
                text(
                    "INSERT INTO schedules (id, automation_id, workspace_id, kind, timezone,"
                    " enabled, misfire_policy, catchup_window_s, overlap_policy, jitter_s,"
                    " dispatched_count, run_count, success_count, failure_count, missed_count,"
                    " skipped_count, completed_reason) VALUES (:s, :a, :w, 'interval', 'UTC',"
                    " false, 'run_once', 0, 'skip', 0, 0, 0, 0, 0, 0, 0, :r)"
                ),
                {"s": schedule_id, "a": automation, "w": workspace, "r": reason},
            )

    def reasons(*columns: str) -> list[tuple[Any, ...]]:
        with engine.connect() as conn:
            found = {
                row[0]: tuple(row[1:])
                for row in conn.execute(text(f"SELECT id, {', '.join(columns)} FROM schedules"))
            }
        return [found[i] for i in ids]

    # when migrated to 0014
    command.upgrade(config, "0014")
    # then each is one of the words, the parked one with its error apart
    assert reasons("completed_reason", "parked_error") == [
        (CompletedReason.PARKED, "'No time zone found with key Gone/Away'"),
        (CompletedReason.END_REACHED, None),
        (CompletedReason.MAX_RUNS, None),
        (CompletedReason.RUN_TIME_PASSED, None),
        (CompletedReason.RAN_ONCE, None),
        (CompletedReason.END_REACHED, None),
        (CompletedReason.AUTOMATION_DELETED, None),
        (None, None),
    ]
    # and down again, the parked schedule reads as earlier versions wrote it
    command.downgrade(config, "0013")
    assert reasons("completed_reason")[0] == (written[0],)
    engine.dispose()


_CONSTRAINTS = """
    SELECT c.conname, pg_get_constraintdef(c.oid)
    FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
    WHERE n.nspname = 'public' AND c.contype IN ('c', 'f', 'p', 'u')
      AND c.conrelid::regclass::text <> 'alembic_version'
"""
_INDEXES = """
    SELECT indexname, indexdef FROM pg_indexes
    WHERE schemaname = 'public' AND tablename <> 'alembic_version'
"""


_TABLE_OPTIONS = """
    SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND c.relkind = 'r'
"""


def _schema(url: str) -> dict[str, dict[str, str]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        checks = {name: text_ for name, text_ in conn.execute(text(_CONSTRAINTS))}
        indexes = {name: text_ for name, text_ in conn.execute(text(_INDEXES))}
        options = {name: str(o) for name, o in conn.execute(text(_TABLE_OPTIONS)) if o}
    engine.dispose()
    return {"constraints": checks, "indexes": indexes, "table options": options}


def test_the_migrations_build_exactly_the_schema_the_models_generate(
    database_url: str, create_database: Callable[[], str]
) -> None:
    # given a database built from the models (their CHECKs come from core's words and limits)
    from_models = create_database()
    engine = create_engine(from_models)
    Base.metadata.create_all(engine)
    engine.dispose()
    # when both schemas are read back from PostgreSQL
    migrated, generated = _schema(database_url), _schema(from_models)
    # then every constraint and index is the same, word for word as PostgreSQL prints it
    assert migrated == generated
    # and the vocabulary is what the database accepts
    assert "'buffer_one'" in generated["constraints"]["ck_schedules_overlap"]
    assert f"<= {MAX_STEPS}" in generated["constraints"]["ck_automations_steps_count"]
    assert generated["table options"]["executions"] == "['fillfactor=80']"


def test_the_database_refuses_what_the_limits_refuse(db: None) -> None:
    # given a valid automation
    automation_id = make_automation()
    # when rows beyond a limit are written straight to the tables (not through validation)
    too_far = [
        update(Automation).values(max_retries=MAX_RETRIES + 1),
        update(Automation).values(step_timeout_s=MAX_STEP_TIMEOUT_S + 1),
        update(Automation).values(steps=[{"name": "s", "message": "m"}] * (MAX_STEPS + 1)),
        update(Automation).values(concurrency_limit=0),
        update(Automation).values(concurrency_limit=MAX_CONCURRENCY + 1),
        update(Automation).values(rate_limit_per_s=MIN_RATE_PER_S / 2),
        update(Automation).values(rate_limit_per_s=MAX_RATE_PER_S * 2),
    ]
    for statement in too_far:
        # then PostgreSQL's CHECK refuses each one
        with pytest.raises(IntegrityError), session_scope() as session:
            session.execute(statement.where(Automation.id == automation_id))
    schedule_id = make_schedule(automation_id)
    for values in (
        {"jitter_s": MAX_JITTER_S + 1},
        {"overlap_policy": "sometimes"},
        {"interval_s": MIN_INTERVAL_S - 1},
        {"last_status": "maybe"},
    ):
        with pytest.raises(IntegrityError), session_scope() as session:
            session.execute(update(Schedule).where(Schedule.id == schedule_id).values(**values))


def test_the_slot_key_rejects_a_second_execution_for_a_slot(db: None) -> None:
    automation_id = make_automation()
    schedule_id = make_schedule(automation_id)
    slot = datetime(2030, 1, 1, 9, tzinfo=UTC)
    row = {
        "automation_id": automation_id,
        "workspace_id": ADMIN.workspace_id,
        "schedule_id": schedule_id,
        "scheduled_for": slot,
        "total_steps": 3,
    }
    with session_scope() as session:
        session.add(Execution(**row))
    with pytest.raises(IntegrityError, match="uq_executions_slot"), session_scope() as session:
        session.add(Execution(**row))


def test_a_run_started_by_hand_takes_no_slot_of_its_schedule(db: None) -> None:
    # given a schedule run by hand at the very instant of one of its slots
    automation_id = make_automation()
    schedule_id = make_schedule(automation_id, cron_expr="0 9 * * *", timezone="UTC")
    slot = datetime(2030, 1, 1, 9, tzinfo=UTC)
    row = {
        "automation_id": automation_id,
        "workspace_id": ADMIN.workspace_id,
        "schedule_id": schedule_id,
        "scheduled_for": slot,
        "total_steps": 3,
    }
    with session_scope() as session:
        session.add(Execution(**row, trigger="manual"))
        session.add(Execution(**row, trigger="manual"))
    # when the slot's own run is made, then it is (the slot was still free), once
    with session_scope() as session:
        session.add(Execution(**row, trigger="schedule"))
    with pytest.raises(IntegrityError, match="uq_executions_slot"), session_scope() as session:
        session.add(Execution(**row, trigger="catchup"))


def _executions(schedule_id: uuid.UUID) -> list[tuple[datetime, str]]:
    with session_scope() as session:
        return [
            (r.scheduled_for, r.status)
            for r in session.execute(
                select(Execution.scheduled_for, Execution.status)
                .where(Execution.schedule_id == schedule_id)
                .order_by(Execution.scheduled_for)
            )
        ]


def _dispatch(now: datetime) -> list[Any]:
    with session_scope() as session:
        enqueues, _ = dispatch_batch(session, now=now, config=CONFIG)
    return enqueues


def _interval_schedule(**kw: Any) -> uuid.UUID:
    automation_id = make_automation()
    schedule_id = make_schedule(automation_id, kind="interval", interval_s=60, **kw)
    return schedule_id


def _set_next(schedule_id: uuid.UUID, at: datetime) -> None:
    with session_scope() as session:
        session.execute(update(Schedule).where(Schedule.id == schedule_id).values(next_run_at=at))


def test_dispatch_inserts_one_execution_per_slot_and_advances(db: None) -> None:
    schedule_id = _interval_schedule()
    start = fetch(Schedule, schedule_id).next_run_at
    assert start is not None
    # when dispatched at the first slot, the horizon (90 s) holds two slots
    enqueues = _dispatch(start)
    assert [e.delay_ms for e in enqueues] == [0, 60_000]
    assert _executions(schedule_id) == [
        (start, "queued"),
        (start + timedelta(seconds=60), "queued"),
    ]
    assert fetch(Schedule, schedule_id).next_run_at == start + timedelta(seconds=120)
    # and dispatching the same instant again (a duplicate tick) adds nothing
    assert _dispatch(start) == []
    # and even a scheduler that re-plans the same slots cannot duplicate them
    _set_next(schedule_id, start)
    assert _dispatch(start) == []
    assert len(_executions(schedule_id)) == 2


@pytest.mark.parametrize(
    ("policy", "expected_run", "expected_skipped"),
    [("skip", 0, 5), ("run_once", 1, 4), ("run_all", 5, 0)],
)
def test_misfire_policies_after_downtime(
    db: None, policy: str, expected_run: int, expected_skipped: int
) -> None:
    # given a minutely schedule whose scheduler was down for 5 slots (within the window)
    schedule_id = _interval_schedule(misfire_policy=policy)
    start = fetch(Schedule, schedule_id).next_run_at
    assert start is not None
    now = start + timedelta(minutes=5, seconds=30)  # slots at +0..+4 min are missed
    # when the scheduler comes back
    enqueues = _dispatch(now)
    # then the policy decides which missed slots run; the due ones always run
    rows = _executions(schedule_id)
    missed = [r for r in rows if r[0] < now - timedelta(seconds=60)]
    assert sum(1 for _, status in missed if status == "queued") == expected_run
    assert sum(1 for _, status in missed if status == "skipped") == expected_skipped
    due = [r for r in rows if r[0] >= now - timedelta(seconds=60)]
    assert all(status == "queued" for _, status in due) and len(due) == 2
    assert len(enqueues) == expected_run + 2
    assert fetch(Schedule, schedule_id).missed_count == expected_skipped


def test_slots_older_than_the_catchup_window_are_only_counted(db: None) -> None:
    schedule_id = _interval_schedule(misfire_policy="run_all", catchup_window_s=600)
    start = fetch(Schedule, schedule_id).next_run_at
    assert start is not None
    now = start + timedelta(hours=2)
    _dispatch(now)
    rows = _executions(schedule_id)
    assert all(r[0] >= now - timedelta(seconds=600) for r in rows)
    assert fetch(Schedule, schedule_id).missed_count >= 100  # 2 h of minutes minus the window


def test_a_once_schedule_completes_with_a_reason(db: None) -> None:
    automation_id = make_automation()
    with session_scope() as session:
        run_at = db_now(session) + timedelta(seconds=30)
    schedule_id = make_schedule(automation_id, kind="once", run_at=run_at)
    _dispatch(run_at - timedelta(seconds=10))
    schedule = fetch(Schedule, schedule_id)
    assert not schedule.enabled and schedule.next_run_at is None
    assert schedule.completed_reason == "ran once"
    assert _executions(schedule_id) == [(run_at, "queued")]


def _two_due_runs(**schedule: Any) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A minutely schedule dispatched a minute late: its first two slots are both due."""
    schedule_id = _interval_schedule(**schedule)
    start = fetch(Schedule, schedule_id).next_run_at
    assert start is not None
    _dispatch(start + timedelta(seconds=61))
    with session_scope() as session:
        first, second = session.scalars(
            select(Execution.id)
            .where(Execution.schedule_id == schedule_id)
            .order_by(Execution.scheduled_for)
        ).all()[:2]
    return schedule_id, first, second


def test_overlap_skip_records_a_skipped_execution(db: None) -> None:
    schedule_id, first, second = _two_due_runs(overlap_policy="skip")
    with session_scope() as session:
        assert not isinstance(claim_execution(session, first, lease_s=5), str)
    with session_scope() as session:
        assert claim_execution(session, second, lease_s=5) == "skipped"
    assert fetch(Schedule, schedule_id).skipped_count == 1
    assert "skipped" in {s for _, s in _executions(schedule_id)}


def test_a_claim_is_taken_once(db: None) -> None:
    execution_id = make_execution(make_automation())
    with session_scope() as session:
        claim = claim_execution(session, execution_id, lease_s=5)
    assert not isinstance(claim, str) and claim.attempt == 1
    with session_scope() as session:
        assert claim_execution(session, execution_id, lease_s=5) == "nothing"


def test_housekeeping_finds_lost_messages_and_expired_leases(db: None) -> None:
    automation_id = make_automation(max_retries=2)
    lost = make_execution(automation_id)
    running = make_execution(automation_id)
    fresh = make_execution(automation_id)
    # a run claimed 40 s ago whose worker died: its lease expired, nothing else is late
    killed = make_execution(automation_id)
    with session_scope() as session:
        now = db_now(session)
        session.execute(
            update(Execution)
            .where(Execution.id == lost)
            .values(available_at=now - timedelta(minutes=5))
        )
        session.execute(
            update(Execution)
            .where(Execution.id == running)
            .values(
                status="running",
                attempt=1,
                available_at=now - timedelta(minutes=5),
                lease_expires_at=now - timedelta(seconds=1),
            )
        )
        session.execute(
            update(Execution)
            .where(Execution.id == killed)
            .values(
                status="running",
                attempt=1,
                available_at=now - timedelta(seconds=40),
                lease_expires_at=now - timedelta(seconds=10),
            )
        )
    # a worker's sweep looks at expired leases only
    with session_scope() as session:
        swept = stranded_executions(session, requeue_after_s=None, resend_after_s=30, limit=100)
    assert {r.execution_id for r in swept} == {running, killed}
    with session_scope() as session:
        found = stranded_executions(session, requeue_after_s=60, resend_after_s=30, limit=100)
    # the swept runs were sent just now: housekeeping does not send them again at once
    assert {r.execution_id: (r.retries, r.max_retries) for r in found} == {lost: (0, 2)}
    assert fresh not in {r.execution_id for r in found}
    with session_scope() as session:
        assert stranded_executions(session, requeue_after_s=60, resend_after_s=30, limit=100) == []
    # and the retry budgets travel: every claim so far spent one try
    assert {r.execution_id: (r.retries, r.max_retries) for r in swept} == {
        running: (1, 2),
        killed: (1, 2),
    }


def test_retention_purges_old_finished_history_in_batches(db: None) -> None:
    automation_id = make_automation()
    old = [make_execution(automation_id) for _ in range(5)]
    recent = make_execution(automation_id)
    with session_scope() as session:
        session.execute(
            update(Execution)
            .where(Execution.id.in_(old))
            .values(status="succeeded", queued_at=datetime(2020, 1, 1, tzinfo=UTC))
        )
    with session_scope() as session:
        assert purge_history(session, older_than_days=90, batch=3) == 3
    with session_scope() as session:
        assert purge_history(session, older_than_days=90, batch=3) == 2
    with session_scope() as session:
        assert purge_history(session, older_than_days=90, batch=3) == 0
        assert session.get(Execution, recent) is not None


@pytest.mark.parametrize(
    ("overrides", "field", "text"),
    [
        ({"kind": "cron", "cron_expr": "0 25 * * *"}, "cron_expr", "hour"),
        ({"kind": "cron", "cron_expr": "* * *"}, "cron_expr", "5"),
        (
            {"kind": "cron", "cron_expr": "0 9 * * *", "timezone": "Mars/Olympus"},
            "timezone",
            "unknown timezone",
        ),
        ({"kind": "interval", "interval_s": 9}, "interval_s", "10 seconds"),
        (
            {
                "kind": "interval",
                "interval_s": 60,
                "start_at": datetime(2030, 1, 2, tzinfo=UTC),
                "end_at": datetime(2030, 1, 1, tzinfo=UTC),
            },
            "end_at",
            "after",
        ),
    ],
)
def test_bad_schedules_write_nothing(
    db: None, overrides: dict[str, Any], field: str, text: str
) -> None:
    automation_id = make_automation()
    before = table_snapshot()
    with pytest.raises(ValidationFailed) as error, session_scope() as session:
        schedules.create_schedule(
            session,
            automation_id,
            schedule_definition(ScheduleInput(spec=ScheduleSpec(**overrides))),
            actor=ADMIN,
        )
    assert text in (error.value.for_field(field) or "")
    assert table_snapshot() == before


@pytest.mark.parametrize(
    ("overrides", "field", "text"),
    [
        ({"steps": 0}, "steps", "at least one step"),
        ({"steps": 51}, "steps", "at most 50"),
        ({"agent_url": "ftp://agent/x"}, "agent_url", "http"),
        ({"agent_url": "javascript:alert(1)"}, "agent_url", "http"),
        ({"name": "x" * 201}, "name", "longer than"),
        ({"name": "  "}, "name", "required"),
    ],
)
def test_bad_automations_write_nothing(
    db: None, overrides: dict[str, Any], field: str, text: str
) -> None:
    before = table_snapshot()
    with pytest.raises(ValidationFailed) as error, session_scope() as session:
        automations.create_automation(session, automation_input(**overrides), actor=ADMIN)
    assert text in (error.value.for_field(field) or "")
    assert table_snapshot() == before


def test_deleting_an_automation_cancels_its_queued_runs(db: None) -> None:
    automation_id = make_automation()
    execution_id = make_execution(automation_id)
    with session_scope() as session:
        assert automations.delete_automation(session, automation_id, actor=ADMIN) == 1
    with session_scope() as session:
        row = session.get(Execution, execution_id)
        assert row is not None and row.status == "cancelled"
        assert "automation was deleted" in (row.error or "")
        assert claim_execution(session, execution_id, lease_s=5) == "nothing"


def test_a_schedule_that_cannot_be_planned_is_parked_not_blocking_others(db: None) -> None:
    # given two due schedules, one holding a zone that no longer exists
    broken = _interval_schedule()
    healthy = _interval_schedule()
    start = fetch(Schedule, healthy).next_run_at
    assert start is not None
    with session_scope() as session:
        session.execute(
            update(Schedule)
            .where(Schedule.id == broken)
            .values(kind="cron", cron_expr="0 9 * * *", timezone="Gone/Away", next_run_at=start)
        )
    # when dispatching
    _dispatch(start)
    # then the healthy one ran and the broken one is disabled with a reason
    assert _executions(healthy)
    parked = fetch(Schedule, broken)
    assert not parked.enabled
    assert (parked.completed_reason or "").startswith("disabled:")
    assert parked.completed_reason == CompletedReason.PARKED
    assert "Gone/Away" in (parked.parked_error or "")


def test_a_retry_is_not_skipped_by_the_overlap_policy(db: None) -> None:
    from db.runs import release_for_retry

    # given an overlap=skip schedule whose first run failed and waits for its retry
    schedule_id, first, second = _two_due_runs(overlap_policy="skip")
    with session_scope() as session:
        claim = claim_execution(session, first, lease_s=5)
        assert not isinstance(claim, str)
    with session_scope() as session:
        assert release_for_retry(session, claim, "step 1: HTTP 503", 0)
    # while the next slot is running
    with session_scope() as session:
        assert not isinstance(claim_execution(session, second, lease_s=5), str)
    # when the retry arrives, it resumes its run rather than being skipped
    with session_scope() as session:
        retried = claim_execution(session, first, lease_s=5)
    assert not isinstance(retried, str) and retried.attempt == 2
    assert fetch(Schedule, schedule_id).skipped_count == 0


def test_an_edit_is_audited_with_old_and_new_values_and_no_secret(db: None) -> None:
    # given an automation whose URL carries a key
    automation_id = make_automation(name="Before", agent_url="http://127.0.0.1:9/a?api_key=OLD")
    schedule_id = make_schedule(automation_id, kind="interval", interval_s=60)
    # when its name, URL and context change, and its schedule's misfire policy
    service_automations.update(
        automation_id,
        automation_input(
            name="After",
            agent_url="http://127.0.0.1:9/b?api_key=NEW",
            project_context="longer context",
        ),
        actor=person("alice"),
    )
    current = fetch(Schedule, schedule_id)
    service_schedules.update(
        schedule_id,
        schedule_definition(
            ScheduleInput(spec=spec_of(current), misfire_policy=MisfirePolicy.SKIP)
        ),
        actor=person("bob"),
    )
    # then each audit row names exactly what changed, from what to what, keys redacted
    with session_scope() as session:
        rows = list_audit(session, AuditFilters(actions=(AuditAction.EDIT,)), actor=ADMIN)
    by_actor = {r.actor: r.details["changed"] for r in rows}
    assert by_actor["alice"] == {
        "name": ["Before", "After"],
        "agent_url": [
            "http://127.0.0.1:9/a?api_key=REDACTED",
            "http://127.0.0.1:9/b?api_key=REDACTED",
        ],
        "project_context": ["9 characters", "14 characters"],
    }
    assert by_actor["bob"] == {"misfire_policy": ["run_once", "skip"]}
    assert "OLD" not in repr(rows) and "NEW" not in repr(rows)


def test_a_step_start_stores_the_previous_answer_in_the_same_statement(db: None) -> None:
    from sqlalchemy import event

    from core.outcome import StepOutcome
    from db.runs import start_step
    from db.session import get_engine

    # given a claimed run whose step 1 is at the agent
    execution_id = make_execution(make_automation(steps=2))
    with session_scope() as session:
        claim = claim_execution(session, execution_id, lease_s=5)
        assert not isinstance(claim, str)
        first = start_step(session, claim, 1, {"step": 1}, lease_s=5)
    assert first is not None
    answer = StepOutcome(True, False, 200, '{"output": 1}', None, 12)
    # when step 2 starts with step 1's answer, counting the statements sent
    sent: list[str] = []
    listener = lambda *args: sent.append(args[2])  # noqa: E731
    event.listen(get_engine(), "before_cursor_execute", listener)
    try:
        with session_scope() as session:
            second = start_step(
                session, claim, 2, {"step": 2}, lease_s=30, finished=(first, answer)
            )
    finally:
        event.remove(get_engine(), "before_cursor_execute", listener)
    # then one statement stored the answer, renewed the lease and started step 2
    assert len(sent) == 1
    rows = {r.step_number: r for r in step_runs(execution_id)}
    assert (rows[1].status, rows[1].response_status, rows[1].duration_ms) == ("succeeded", 200, 12)
    assert (rows[2].id, rows[2].status, rows[2].request) == (second, "running", {"step": 2})
    row = execution(execution_id)
    assert row.current_step == 2 and row.lease_expires_at is not None
    # and once the run is no longer this claim's, a start stores the answer and starts nothing
    with session_scope() as session:
        session.execute(update(Execution).where(Execution.id == execution_id).values(attempt=9))
    with session_scope() as session:
        late = StepOutcome(True, False, 200, "{}", None, 5)
        assert start_step(session, claim, 3, {}, lease_s=5, finished=(second, late)) is None
    assert len(step_runs(execution_id)) == 2


def test_a_group_claim_takes_each_run_once_and_leaves_overlap_decisions_to_each(
    db: None,
) -> None:
    from db.claims import claim_executions

    # given plain runs, the two due slots of an overlap=skip schedule, a run of a
    # deleted automation, and a run another worker holds
    plain = [make_execution(make_automation()) for _ in range(3)]
    _, first, second = _two_due_runs(overlap_policy="skip")
    gone_automation = make_automation()
    gone = make_execution(gone_automation)
    with session_scope() as session:
        automations.delete_automation(session, gone_automation, actor=ADMIN)
    held = make_execution(make_automation())
    with session_scope() as session:
        assert not isinstance(claim_execution(session, held, lease_s=30), str)
    # when one group claim gets them all, with a duplicate message in the batch
    ids = [plain[0], plain[0], first, second, plain[1], gone, held, plain[2]]
    with session_scope() as session:
        results = claim_executions(session, ids, lease_s=5)
    # then each run is claimed once, in order, and the overlap policy still decides
    kinds = [r if isinstance(r, str) else "claimed" for r in results]
    assert kinds == [
        "claimed", "nothing", "claimed", "skipped", "claimed", "nothing", "nothing", "claimed",
    ]  # fmt: skip
    claims = [r for r in results if not isinstance(r, str)]
    assert [c.execution_id for c in claims] == [plain[0], first, plain[1], plain[2]]
    assert all(c.attempt == 1 and c.first_step == 1 and c.total_steps >= 1 for c in claims)
    assert claims[1].overlap_policy == "skip" and claims[0].overlap_policy is None
    assert {execution(i).status for i in plain} == {"running"}
    assert execution(held).attempt == 1


def test_a_group_claim_resumes_a_run_whose_worker_died_mid_step(db: None) -> None:
    from core.outcome import StepOutcome
    from db.claims import claim_executions
    from db.runs import LOST_STEP_ERROR, start_step

    # given a 3-step run whose step 1 succeeded and whose worker died during step 2
    execution_id = make_execution(make_automation(steps=3))
    with session_scope() as session:
        claim = claim_execution(session, execution_id, lease_s=5)
        assert not isinstance(claim, str)
        one = start_step(session, claim, 1, {}, lease_s=5)
        assert one is not None
        answer = StepOutcome(True, False, 200, '{"output": "one"}', None, 3)
        start_step(session, claim, 2, {}, lease_s=5, finished=(one, answer))
        session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    # when a group claim takes it over
    with session_scope() as session:
        (resumed,) = claim_executions(session, [execution_id], lease_s=5)
    # then it goes on at step 2 with step 1's output, and step 2 is marked lost
    assert not isinstance(resumed, str)
    assert (resumed.attempt, resumed.first_step) == (2, 2)
    assert resumed.previous_output == {"output": "one"}
    rows = {r.step_number: r for r in step_runs(execution_id)}
    assert (rows[2].status, rows[2].error) == ("failed", LOST_STEP_ERROR)


def test_a_run_ends_with_its_last_answer_and_counters_in_one_statement(db: None) -> None:
    from sqlalchemy import event

    from core.outcome import StepOutcome
    from core.vocabulary import ExecutionStatus
    from db.runs import finish_execution, start_step
    from db.session import get_engine

    # given a scheduled run at its only step
    schedule_id, first, _ = _two_due_runs(overlap_policy="allow")
    with session_scope() as session:
        claim = claim_execution(session, first, lease_s=5)
        assert not isinstance(claim, str)
        step = start_step(session, claim, 1, {}, lease_s=5)
    assert step is not None
    before = fetch(Schedule, schedule_id)
    # when it ends with the step's answer, counting the statements sent
    sent: list[str] = []
    listener = lambda *args: sent.append(args[2])  # noqa: E731
    event.listen(get_engine(), "before_cursor_execute", listener)
    answer = StepOutcome(True, False, 200, '{"output": {"n": 1}}', None, 7)
    try:
        with session_scope() as session:
            ended = finish_execution(
                session,
                claim,
                ExecutionStatus.SUCCEEDED,
                result={"n": 1},
                finished=(step, answer),
            )
    finally:
        event.remove(get_engine(), "before_cursor_execute", listener)
    # then one statement stored the answer, ended the run and counted it
    assert ended and len(sent) == 1
    row = execution(first)
    assert (row.status, row.result, row.lease_expires_at) == ("succeeded", {"n": 1}, None)
    (stored,) = step_runs(first)
    assert (stored.status, stored.duration_ms) == ("succeeded", 7)
    after = fetch(Schedule, schedule_id)
    assert after.run_count == before.run_count + 1
    assert after.success_count == before.success_count + 1
    assert (after.failure_count, after.last_status) == (before.failure_count, "succeeded")
    # and a second end of the same claim changes nothing
    with session_scope() as session:
        assert not finish_execution(session, claim, ExecutionStatus.FAILED, error="late")
    assert fetch(Schedule, schedule_id).run_count == after.run_count


def test_a_lease_renewal_extends_only_the_runs_still_held(db: None) -> None:
    from db.runs import cancel_executions, renew_leases

    # given three runs this worker claimed with a short lease
    ids = [make_execution(make_automation()) for _ in range(3)]
    with session_scope() as session:
        claims = [claim_execution(session, i, lease_s=5) for i in ids]
    assert not any(isinstance(c, str) for c in claims)
    kept, cancelled, taken = ids
    # when one is cancelled and another taken over by a later claim
    with session_scope() as session:
        cancel_executions(session, Execution.id == cancelled, "cancelled: by a person")
        session.execute(
            update(Execution).where(Execution.id == taken).values(attempt=Execution.attempt + 1)
        )
    with session_scope() as session:
        renewed = renew_leases(session, [(i, 1) for i in ids], lease_s=600)
    # then only the run still held is renewed, for the new lease
    assert renewed == {kept}
    lease = execution(kept).lease_expires_at
    assert lease is not None and lease > datetime.now(UTC) + timedelta(seconds=500)
    taken_lease = execution(taken).lease_expires_at
    assert taken_lease is not None and taken_lease < datetime.now(UTC) + timedelta(seconds=10)
    with session_scope() as session:
        assert renew_leases(session, [], lease_s=600) == set()


def test_a_lease_renewal_never_waits_for_a_run_being_written(db: None) -> None:
    import threading

    from db.runs import renew_leases

    # given two runs this worker holds, one of them locked by its own group commit
    ids = [make_execution(make_automation()) for _ in range(2)]
    with session_scope() as session:
        for i in ids:
            assert not isinstance(claim_execution(session, i, lease_s=5), str)
    writing, free = ids
    locked, release = threading.Event(), threading.Event()

    def group_commit() -> None:
        with session_scope() as session:
            session.execute(
                select(Execution.id).where(Execution.id == writing).with_for_update()
            ).all()
            locked.set()
            release.wait(10)

    writer = threading.Thread(target=group_commit)
    writer.start()
    try:
        assert locked.wait(5)
        # when the leases are renewed meanwhile
        began = datetime.now(UTC)
        with session_scope() as session:
            renewed = renew_leases(session, [(i, 1) for i in ids], lease_s=600)
        waited = datetime.now(UTC) - began
    finally:
        release.set()
        writer.join()
    # then the renewal did not wait (it would deadlock with such commits), kept both
    # runs, and renewed the one it could lock
    assert waited < timedelta(seconds=2)
    assert renewed == {writing, free}
    free_lease = execution(free).lease_expires_at
    assert free_lease is not None and free_lease > datetime.now(UTC) + timedelta(seconds=500)


def test_a_manual_retry_times_the_run_from_the_retry_not_the_first_start(db: None) -> None:
    from db.queries import ExecutionFilters, list_executions

    # given a run that started two hours ago and failed
    automation_id = make_automation()
    failed = make_execution(
        automation_id,
        status="failed",
        attempt=1,
        started_at=now() - timedelta(hours=2),
        finished_at=now() - timedelta(hours=2) + timedelta(seconds=5),
        error="step 1: HTTP 500",
    )
    # when a person retries it now and a worker runs it to the end
    with session_scope() as session:
        executions.retry_execution(session, failed, actor=ADMIN)
    with session_scope() as session:
        assert not isinstance(claim_execution(session, failed, lease_s=5), str)
        session.execute(
            update(Execution)
            .where(Execution.id == failed)
            .values(status="succeeded", finished_at=func.now())
        )
    # then its duration counts from the retry's start, not across the idle two hours
    with session_scope() as session:
        [row] = list_executions(session, ExecutionFilters(), actor=ADMIN).rows
    assert row.duration_s is not None and row.duration_s < 60


def test_a_sweep_takes_no_more_runs_than_its_limit(db: None) -> None:
    """Each sweep and purge batch is bounded: the rows it changes stop matching its
    condition, and a batch read more than once would take the next rows too."""
    automation_id = make_automation()
    lost = [make_execution(automation_id) for _ in range(5)]
    with session_scope() as session:
        session.execute(
            update(Execution)
            .where(Execution.id.in_(lost))
            .values(available_at=db_now(session) - timedelta(minutes=5))
        )
    taken: list[uuid.UUID] = []
    for expected in (2, 2, 1, 0):
        with session_scope() as session:
            found = stranded_executions(session, requeue_after_s=60, resend_after_s=30, limit=2)
        assert len(found) == expected
        taken += [r.execution_id for r in found]
    assert sorted(taken) == sorted(lost)


def _due_cron_runs(n: int, **schedule: Any) -> list[uuid.UUID]:
    """N `* * * * *` schedules (default policies: overlap skip), dispatched at their
    first slot: each one's run of that slot (the next slot is queued too)."""
    ids = [make_schedule(make_automation(), **schedule) for _ in range(n)]
    firsts = [fetch(Schedule, i).next_run_at for i in ids]
    _dispatch(max(f for f in firsts if f is not None))
    return [executions_of(i)[0].id for i in ids]


def _statements_of(work: Callable[[], Any]) -> tuple[Any, list[str]]:
    from sqlalchemy import event

    from db.session import get_engine

    sent: list[str] = []
    listener = lambda *args: sent.append(args[2])  # noqa: E731
    event.listen(get_engine(), "before_cursor_execute", listener)
    try:
        return work(), sent
    finally:
        event.remove(get_engine(), "before_cursor_execute", listener)


def test_a_group_of_cron_runs_of_many_schedules_is_claimed_in_one_update(db: None) -> None:
    from db.claims import claim_executions

    # given 20 `skip` schedules, one due run each
    ids = _due_cron_runs(20)

    # when one group claim gets them, counting the statements sent
    def claim() -> list[Any]:
        with session_scope() as session:
            return claim_executions(session, ids, lease_s=5)

    results, sent = _statements_of(claim)
    # then all are claimed: the fast-path UPDATE, one lock statement and one UPDATE
    # for the overlap decisions, whatever the group's size
    assert [r.execution_id for r in results if not isinstance(r, str)] == ids
    assert all(r.overlap_policy == "skip" and r.attempt == 1 for r in results)
    assert len(sent) == 3, sent
    assert {execution(i).status for i in ids} == {"running"}


def test_a_group_claim_runs_one_of_two_runs_of_a_skip_schedule(db: None) -> None:
    from db.claims import claim_executions

    # given two due runs of one `skip` schedule and runs of other `skip` schedules
    schedule_id, first, second = _two_due_runs(overlap_policy="skip")
    others = _due_cron_runs(3)
    # when one group claim gets them all
    with session_scope() as session:
        results = claim_executions(session, [others[0], second, first, *others[1:]], lease_s=5)
    # then exactly one run of the schedule runs (the first slot, a catch-up run that
    # goes first) and the other is skipped
    kinds = [r if isinstance(r, str) else "claimed" for r in results]
    assert kinds == ["claimed", "skipped", "claimed", "claimed", "claimed"]
    assert (execution(first).status, execution(second).status) == ("running", "skipped")
    assert fetch(Schedule, schedule_id).skipped_count == 1


def test_a_group_claim_skips_a_run_whose_sibling_is_running(db: None) -> None:
    from db.claims import claim_executions

    # given a `skip` schedule whose first run is running, and another schedule's run
    _, first, second = _two_due_runs(overlap_policy="skip")
    with session_scope() as session:
        assert not isinstance(claim_execution(session, first, lease_s=30), str)
    (other,) = _due_cron_runs(1)
    # when a group claims its second run and the other
    with session_scope() as session:
        results = claim_executions(session, [second, other], lease_s=5)
    # then the second run is skipped, the other runs
    assert results[0] == "skipped" and not isinstance(results[1], str)
    assert execution(second).status == "skipped"


def test_a_group_claim_keeps_one_run_of_a_buffer_one_schedule_waiting(db: None) -> None:
    from db.claims import claim_executions

    # given two due runs of one `buffer_one` schedule and another schedule's run
    _, first, second = _two_due_runs(overlap_policy="buffer_one")
    (other,) = _due_cron_runs(1, overlap_policy="buffer_one")
    # when one group claim gets them all
    with session_scope() as session:
        results = claim_executions(session, [first, second, other], lease_s=5)
    # then the first runs, the second waits queued for it, the other runs
    kinds = [r if isinstance(r, str) else "claimed" for r in results]
    assert kinds == ["claimed", "waiting", "claimed"]
    assert (execution(first).status, execution(second).status) == ("running", "queued")


def test_concurrent_group_claims_never_start_two_runs_of_a_skip_schedule(db: None) -> None:
    import threading

    from db.claims import claim_executions

    # given the first two slots of one `skip` cron schedule (no catch-up run: nothing
    # but the lock keeps the two apart), each in its own worker's group
    first, a, b = _due_cron_runs(3)
    schedule_id = execution(first).schedule_id
    assert schedule_id is not None
    second = executions_of(schedule_id)[1].id
    outcome: list[Any] = []
    with session_scope() as session:
        # when one worker's group has claimed the first run and not committed yet
        held = claim_executions(session, [first, a], lease_s=5)
        other = threading.Thread(
            target=lambda: outcome.append(_claim_group([second, b])), daemon=True
        )
        other.start()
        # and the other worker's group waits for the schedule's lock
        wait_for(_lock_awaited, timeout=60, message="the other group to wait for the lock")
    other.join(60)
    # then the first worker's runs run, and the other's run of the schedule is skipped
    assert all(not isinstance(r, str) for r in held)
    assert outcome[0][0] == "skipped" and not isinstance(outcome[0][1], str)
    assert (execution(first).status, execution(second).status) == ("running", "skipped")


def _claim_group(ids: list[uuid.UUID]) -> list[Any]:
    from db.claims import claim_executions

    with session_scope() as session:
        return claim_executions(session, ids, lease_s=5)


def _lock_awaited() -> bool:
    with session_scope() as session:
        return bool(
            session.execute(
                text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                    " WHERE d.datname = current_database()"
                    " AND l.locktype = 'advisory' AND NOT l.granted"
                )
            ).scalar()
        )


def test_a_group_claim_reads_a_runs_siblings_through_the_indexes(db: None) -> None:
    from db.claims import _CLAIM_UNCONTESTED

    # given due runs of `skip` cron schedules
    ids = _due_cron_runs(3)
    # when the group claim's plan is asked for with sequential scans made a last resort
    with session_scope() as session:
        session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            session.execute(
                text(f"EXPLAIN {_CLAIM_UNCONTESTED.text}"), {"ids": ids, "lease_s": 5}
            ).scalars()
        )
    # then no step of it reads the whole executions table: at 10,000 runs a scan of it
    # for each group took 20 ms (bench/RESULTS.md, issue 24)
    assert "Seq Scan on executions" not in plan, plan


def test_step_starts_of_a_group_commit_are_one_statement_fenced_per_run(db: None) -> None:
    from core.outcome import StepOutcome
    from db.runs import StepStart, start_steps

    # given three claimed runs at step 1, one of them since taken over by another worker
    automation_id = make_automation(steps=2)
    ids = [make_execution(automation_id) for _ in range(3)]
    with session_scope() as session:
        claims = [claim_execution(session, i, lease_s=5) for i in ids]
        assert all(not isinstance(c, str) for c in claims)
        firsts = start_steps(
            session,
            [StepStart(c, 1, {"step": 1}) for c in claims],
            lease_s=5,  # type: ignore[arg-type]
        )
    assert all(isinstance(f, int) for f in firsts) and len(set(firsts)) == 3
    with session_scope() as session:
        session.execute(update(Execution).where(Execution.id == ids[1]).values(attempt=9))
    # (a body with quotes, backslashes, line breaks and text beyond ASCII, stored as sent)
    body = '{"output": "say \\"hi\\"\\\\ é ✓\\n", "n": 1}'
    answer = StepOutcome(True, False, 200, body, None, 7)
    # when each run's step 2 starts with step 1's answer, in one group commit
    starts = [
        StepStart(c, 2, {"step": 2}, (f, answer)) for c, f in zip(claims, firsts, strict=True)
    ]  # type: ignore[arg-type]

    def start() -> list[int | None]:
        with session_scope() as session:
            return start_steps(session, starts, lease_s=30)

    seconds, sent = _statements_of(start)
    # then one statement stored every answer and started the steps of the runs still
    # held; the run taken over got its answer stored and no step started
    assert len(sent) == 1, sent
    assert seconds[1] is None and all(isinstance(seconds[i], int) for i in (0, 2))
    for i, execution_id in enumerate(ids):
        rows = {r.step_number: r for r in step_runs(execution_id)}
        assert (rows[1].status, rows[1].response_status, rows[1].duration_ms) == (
            "succeeded",
            200,
            7,
        )
        assert rows[1].response_body == body
        if i == 1:
            assert 2 not in rows and execution(execution_id).current_step == 1
        else:
            assert (rows[2].id, rows[2].request) == (seconds[i], {"step": 2})
            assert execution(execution_id).current_step == 2


def test_the_runs_held_back_are_found_for_many_schedules_in_one_statement(db: None) -> None:
    from db.runs import next_waiting

    # given two `buffer_one` schedules each with a run waiting behind a running one,
    # and a schedule with nothing waiting
    waiting = []
    for _ in range(2):
        _, first, second = _two_due_runs(overlap_policy="buffer_one")
        with session_scope() as session:
            assert not isinstance(claim_execution(session, first, lease_s=30), str)
            assert claim_execution(session, second, lease_s=30) == "waiting"
        waiting.append((execution(first).schedule_id, second))
    with session_scope() as session:  # their slots have come (they were dispatched ahead)
        session.execute(
            update(Execution)
            .where(Execution.schedule_id.in_([s for s, _ in waiting]))
            .values(scheduled_for=Execution.scheduled_for - timedelta(hours=1))
        )
    (idle,) = _due_cron_runs(1)
    idle_schedule = execution(idle).schedule_id
    with session_scope() as session:
        assert not isinstance(claim_execution(session, idle, lease_s=30), str)

    # when the runs held back are asked for, for all three schedules at once
    def ask() -> dict[Any, Any]:
        with session_scope() as session:
            return next_waiting(session, [s for s, _ in waiting] + [idle_schedule])

    found, sent = _statements_of(ask)
    # then one statement names each schedule's waiting run, with its retry budget
    assert len(sent) == 1
    assert {s: m.execution_id for s, m in found.items()} == dict(waiting)
    assert all(m.retries == 0 and m.max_retries == 3 for m in found.values())


def test_the_ends_of_a_group_commit_are_one_statement_counted_per_schedule(db: None) -> None:
    from core.outcome import StepOutcome
    from core.vocabulary import ExecutionStatus
    from db.runs import RunEnd, finish_executions, start_step

    # given three running runs of one `allow` schedule, one of them since cancelled
    schedule_id, first, second = _two_due_runs(overlap_policy="allow")
    third = make_execution(make_automation(), schedule_id=schedule_id, trigger="schedule")
    ids = [first, second, third]
    with session_scope() as session:
        claims = [claim_execution(session, i, lease_s=30) for i in ids]
        assert all(not isinstance(c, str) for c in claims)
        steps = [start_step(session, c, 1, {}, lease_s=30) for c in claims]  # type: ignore[arg-type]
    with session_scope() as session:
        session.execute(update(Execution).where(Execution.id == third).values(status="cancelled"))
    before = fetch(Schedule, schedule_id)
    answer = StepOutcome(True, False, 200, '{"output": 2}', None, 3)
    # when all three end in one group commit, the first failed and the second succeeded
    ends = [
        RunEnd(claims[0], ExecutionStatus.FAILED, error="step 1: no", finished=(steps[0], answer)),  # type: ignore[arg-type]
        RunEnd(claims[1], ExecutionStatus.SUCCEEDED, result=2, finished=(steps[1], answer)),  # type: ignore[arg-type]
        RunEnd(claims[2], ExecutionStatus.SUCCEEDED, result=3, finished=(steps[2], answer)),  # type: ignore[arg-type]
    ]

    def end() -> list[bool]:
        with session_scope() as session:
            return finish_executions(session, ends)

    ended, sent = _statements_of(end)
    # then one statement ended the two runs still held, and the schedule counts both
    assert len(sent) == 1 and ended == [True, True, False]
    assert (execution(first).status, execution(first).error) == ("failed", "step 1: no")
    assert (execution(second).status, execution(second).result) == ("succeeded", 2)
    assert execution(third).status == "cancelled"
    assert all(step_runs(i)[0].status == "succeeded" for i in (first, second))
    after = fetch(Schedule, schedule_id)
    assert after.run_count == before.run_count + 2
    assert (after.success_count, after.failure_count) == (
        before.success_count + 1,
        before.failure_count + 1,
    )
    assert after.last_status == "succeeded"  # the last end of the batch
