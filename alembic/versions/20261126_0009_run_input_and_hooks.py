"""run input and inbound webhook triggers

Schedules and executions carry a JSON input (sent to the agent with every step);
each automation may have one inbound webhook trigger (its secret sealed), whose
deliveries are remembered by id so that a repeat starts no second run. Adds the
`webhook` trigger and the audit words for enabling, rotating and disabling a hook.

Revision ID: 0009
Revises: 0010 (numbered before it, merged after it: it runs after the notifications)
Create Date: 2026-11-26 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0009"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIGGERS = "'schedule', 'catchup', 'manual', 'retry'"
ACTIONS = (
    "'create', 'edit', 'pause', 'resume', 'delete', 'run_now', 'retry', 'cancel', "
    "'rotate_secret', 'create_workspace', 'add_member', 'set_role', 'remove_member', "
    "'retry_dead_letter', 'purge_dead_letters', 'set_secret', 'delete_secret', 'set_quota', "
    "'create_token', 'revoke_token', 'add_channel', 'delete_channel', 'test_channel', "
    "'set_notifications'"
)
NEW_ACTIONS = "'enable_hook', 'rotate_hook', 'disable_hook'"


def _check(name: str, table: str, condition: str) -> None:
    op.drop_constraint(op.f(name), table, type_="check")
    op.create_check_constraint(op.f(name), table, condition)


def upgrade() -> None:
    op.add_column("schedules", sa.Column("input", postgresql.JSONB(), nullable=True))
    op.add_column("executions", sa.Column("input", postgresql.JSONB(), nullable=True))
    _check("ck_executions_trigger", "executions", f"trigger IN ({TRIGGERS}, 'webhook')")
    _check("ck_audit_log_action", "audit_log", f"action IN ({ACTIONS}, {NEW_ACTIONS})")
    op.create_table(
        "hook_triggers",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("automation_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("workspace_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["automation_id"],
            ["automations.id"],
            name=op.f("fk_hook_triggers_automation_id_automations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_hook_triggers_workspace_id_workspaces"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hook_triggers")),
        sa.UniqueConstraint("automation_id", name=op.f("uq_hook_triggers_automation_id")),
    )
    op.create_table(
        "hook_deliveries",
        sa.Column("trigger_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("delivery_id", sa.String(length=200), nullable=False),
        sa.Column("execution_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["trigger_id"],
            ["hook_triggers.id"],
            name=op.f("fk_hook_deliveries_trigger_id_hook_triggers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["executions.id"],
            name=op.f("fk_hook_deliveries_execution_id_executions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("trigger_id", "delivery_id", name=op.f("pk_hook_deliveries")),
    )
    op.create_index(
        op.f("ix_hook_deliveries_execution_id"), "hook_deliveries", ["execution_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_hook_deliveries_execution_id"), table_name="hook_deliveries")
    op.drop_table("hook_deliveries")
    op.drop_table("hook_triggers")
    op.execute(f"DELETE FROM audit_log WHERE action IN ({NEW_ACTIONS})")
    _check("ck_audit_log_action", "audit_log", f"action IN ({ACTIONS})")
    op.execute("UPDATE executions SET trigger = 'manual' WHERE trigger = 'webhook'")
    _check("ck_executions_trigger", "executions", f"trigger IN ({TRIGGERS})")
    op.drop_column("executions", "input")
    op.drop_column("schedules", "input")
