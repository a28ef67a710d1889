"""durable waits: a run may be `waiting` (parked), a step run `waiting` until its wait ends

A graph's step of kind async (its agent answered 202 and will call back), approval (a
person decides) or sleep waits without a worker: its step run is stored `waiting` with
the instant its wait ends by its kind's rule (`wait_until`) and what it waits for (`wait`,
JSONB); a run whose only open steps wait is parked as `waiting`, with no lease and its
wake-up time in `available_at` (docs/RELIABILITY.md, "Waits"). A waiting run is open: the
partial indexes over open runs now cover it (their predicate is rebuilt), and two small
partial indexes find parked runs by wake-up time and a run's open waits. A parked run's
wake-up goes to Redis only once its time is near (`wake_sent_at`: when it was sent; NULL
while it is far off, housekeeping sends it when it comes within the wake horizon). The audit log
records approvals and rejections. The words are written out (not imported) so this
revision keeps meaning what it meant; tests/test_db.py compares the migrated schema with
the models'.

Older workers cannot run beside this revision: they would neither wake a parked run nor
know a waiting step (docs/OPERATIONS.md).

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUNS_BEFORE = ("queued", "running", "succeeded", "failed", "cancelled", "skipped")
RUNS_AFTER = ("queued", "running", "waiting", "succeeded", "failed", "cancelled", "skipped")
OPEN_BEFORE = ("queued", "running")
OPEN_AFTER = ("queued", "running", "waiting")
STEPS_BEFORE = ("running", "succeeded", "failed", "cancelled", "skipped")
STEPS_AFTER = (*STEPS_BEFORE, "waiting")
ACTIONS_BEFORE = (
    "create",
    "edit",
    "pause",
    "resume",
    "delete",
    "run_now",
    "retry",
    "cancel",
    "rotate_secret",
    "create_workspace",
    "add_member",
    "set_role",
    "remove_member",
    "retry_dead_letter",
    "purge_dead_letters",
    "set_secret",
    "delete_secret",
    "set_quota",
    "create_token",
    "revoke_token",
    "add_channel",
    "delete_channel",
    "test_channel",
    "set_notifications",
    "enable_hook",
    "rotate_hook",
    "disable_hook",
    "backfill",
)
ACTIONS_AFTER = (*ACTIONS_BEFORE, "approve", "reject")
DOWNGRADED = "waits are not known to this version: the run was ended when Stepwise was downgraded"


def _in(column: str, words: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(w) for w in words)})"


def _checks(runs: tuple[str, ...], steps: tuple[str, ...], actions: tuple[str, ...]) -> None:
    for table, name in (
        ("executions", "status"),
        ("schedules", "last_status"),
        ("step_runs", "status"),
        ("audit_log", "action"),
    ):
        op.drop_constraint(op.f(f"ck_{table}_{name}"), table, type_="check")
    op.create_check_constraint(op.f("ck_executions_status"), "executions", _in("status", runs))
    op.create_check_constraint(
        op.f("ck_schedules_last_status"),
        "schedules",
        f"last_status IS NULL OR {_in('last_status', runs)}",
    )
    op.create_check_constraint(op.f("ck_step_runs_status"), "step_runs", _in("status", steps))
    op.create_check_constraint(op.f("ck_audit_log_action"), "audit_log", _in("action", actions))


def _open_indexes(words: tuple[str, ...]) -> None:
    op.drop_index("ix_executions_open", table_name="executions")
    op.drop_index("ix_executions_open_by_time", table_name="executions")
    op.create_index(
        "ix_executions_open",
        "executions",
        ["schedule_id", "scheduled_for"],
        postgresql_where=sa.text(_in("status", words)),
    )
    op.create_index(
        "ix_executions_open_by_time",
        "executions",
        ["available_at"],
        postgresql_where=sa.text(_in("status", words)),
    )


def upgrade() -> None:
    op.add_column(
        "executions", sa.Column("wake_sent_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("step_runs", sa.Column("wait_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "step_runs", sa.Column("wait", postgresql.JSONB(astext_type=sa.Text()), nullable=True)
    )
    _checks(RUNS_AFTER, STEPS_AFTER, ACTIONS_AFTER)
    _open_indexes(OPEN_AFTER)
    op.create_index(
        "ix_executions_waiting",
        "executions",
        ["available_at"],
        postgresql_where=sa.text("status = 'waiting'"),
    )
    op.create_index(
        "ix_step_runs_waiting",
        "step_runs",
        ["execution_id"],
        postgresql_where=sa.text("status = 'waiting'"),
    )


def downgrade() -> None:
    # A parked run cannot be carried on by a version that knows no waits: it ends failed
    # (a person may retry it after upgrading again), its waits cancelled.
    op.execute("UPDATE step_runs SET status = 'cancelled' WHERE status = 'waiting'")
    op.execute(
        "UPDATE executions SET status = 'failed', finished_at = now(), lease_expires_at = NULL,"
        f" error = '{DOWNGRADED}' WHERE status = 'waiting'"
    )
    op.execute("DELETE FROM audit_log WHERE action IN ('approve', 'reject')")
    op.drop_index("ix_step_runs_waiting", table_name="step_runs")
    op.drop_index("ix_executions_waiting", table_name="executions")
    _open_indexes(OPEN_BEFORE)
    _checks(RUNS_BEFORE, STEPS_BEFORE, ACTIONS_BEFORE)
    op.drop_column("step_runs", "wait")
    op.drop_column("step_runs", "wait_until")
    op.drop_column("executions", "wake_sent_at")
