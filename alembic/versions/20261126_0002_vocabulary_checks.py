"""checks for every bounded column: schedule limits, statuses, audit words

The models generate their CHECK constraints from `core.vocabulary` and
`core.limits`; this revision adds the ones the first schema lacked. The SQL is
written out (not imported) so this revision keeps meaning what it meant when the
constants move on; tests/test_db.py compares the migrated schema with the models.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 12:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECKS = (
    ("ck_schedules_max_runs", "schedules", "max_runs IS NULL OR max_runs >= 1"),
    ("ck_schedules_catchup", "schedules", "catchup_window_s BETWEEN 0 AND 604800"),
    ("ck_schedules_jitter", "schedules", "jitter_s BETWEEN 0 AND 3600"),
    (
        "ck_schedules_last_status",
        "schedules",
        "last_status IS NULL OR last_status IN "
        "('queued', 'running', 'succeeded', 'failed', 'cancelled', 'skipped')",
    ),
    ("ck_step_runs_status", "step_runs", "status IN ('running', 'succeeded', 'failed')"),
    (
        "ck_audit_log_action",
        "audit_log",
        "action IN ('create', 'edit', 'pause', 'resume', 'delete', 'run_now', 'retry', 'cancel')",
    ),
    (
        "ck_audit_log_target_type",
        "audit_log",
        "target_type IN ('automation', 'schedule', 'execution')",
    ),
)


def upgrade() -> None:
    for name, table, condition in CHECKS:
        op.create_check_constraint(op.f(name), table, condition)


def downgrade() -> None:
    for name, table, _ in reversed(CHECKS):
        op.drop_constraint(op.f(name), table, type_="check")
