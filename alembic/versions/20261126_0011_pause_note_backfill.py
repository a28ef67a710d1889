"""pause with a note, and backfill: who paused a schedule, when and why; the backfill trigger

A backfilled run is marked `backfill` (a past slot run on a person's request), and
the audit log records each backfill. The SQL is written out, as in 0004 and 0008.

Revision ID: 0011
Revises: 0009
Create Date: 2026-11-26 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0011"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIGGER = "ck_executions_trigger"
TRIGGERS = "'schedule', 'catchup', 'manual', 'retry', 'webhook'"  # 'webhook': 0009
ACTION = "ck_audit_log_action"
ACTIONS = (
    "'create', 'edit', 'pause', 'resume', 'delete', 'run_now', 'retry', 'cancel', "
    "'rotate_secret', 'create_workspace', 'add_member', 'set_role', 'remove_member', "
    "'retry_dead_letter', 'purge_dead_letters', 'set_secret', 'delete_secret', 'set_quota', "
    "'create_token', 'revoke_token', "
    "'add_channel', 'delete_channel', 'test_channel', 'set_notifications', "  # 0010
    "'enable_hook', 'rotate_hook', 'disable_hook'"  # 0009
)


def upgrade() -> None:
    op.add_column("schedules", sa.Column("paused_by", sa.String(length=200), nullable=True))
    op.add_column("schedules", sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("schedules", sa.Column("pause_note", sa.String(length=500), nullable=True))
    op.drop_constraint(op.f(TRIGGER), "executions", type_="check")
    op.create_check_constraint(op.f(TRIGGER), "executions", f"trigger IN ({TRIGGERS}, 'backfill')")
    op.drop_constraint(op.f(ACTION), "audit_log", type_="check")
    op.create_check_constraint(op.f(ACTION), "audit_log", f"action IN ({ACTIONS}, 'backfill')")


def downgrade() -> None:
    op.execute("DELETE FROM audit_log WHERE action = 'backfill'")
    op.drop_constraint(op.f(ACTION), "audit_log", type_="check")
    op.create_check_constraint(op.f(ACTION), "audit_log", f"action IN ({ACTIONS})")
    # Backfilled runs stay in the history, as the manual runs they were asked as.
    op.execute("UPDATE executions SET trigger = 'manual' WHERE trigger = 'backfill'")
    op.drop_constraint(op.f(TRIGGER), "executions", type_="check")
    op.create_check_constraint(op.f(TRIGGER), "executions", f"trigger IN ({TRIGGERS})")
    op.drop_column("schedules", "pause_note")
    op.drop_column("schedules", "paused_at")
    op.drop_column("schedules", "paused_by")
