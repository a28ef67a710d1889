"""Notifications: channels (apprise URLs, sealed), each automation's rule and channels,
notices (one per incident) and their deliveries; audit words for channels

Revision ID: 0010
Revises: 0008
Create Date: 2026-11-26 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0010"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIONS = (
    "'create', 'edit', 'pause', 'resume', 'delete', 'run_now', 'retry', 'cancel', "
    "'rotate_secret', 'create_workspace', 'add_member', 'set_role', 'remove_member', "
    "'retry_dead_letter', 'purge_dead_letters', 'set_secret', 'delete_secret', 'set_quota', "
    "'create_token', 'revoke_token'"
)
NEW_ACTIONS = "'add_channel', 'delete_channel', 'test_channel', 'set_notifications'"
TARGETS = "'automation', 'schedule', 'execution', 'workspace', 'queue', 'secret', 'token'"
KINDS = "kind IN ('failure', 'recovery', 'parked', 'completed', 'test')"
UUID = postgresql.UUID(as_uuid=True)


def _now(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def _workspace_key(table: str, cascade: bool = False) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["workspace_id"],
        ["workspaces.id"],
        name=op.f(f"fk_{table}_workspace_id_workspaces"),
        ondelete="CASCADE" if cascade else None,
    )


def upgrade() -> None:
    op.create_table(
        "notification_channels",
        sa.Column("id", UUID, nullable=False),
        sa.Column("workspace_id", UUID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("sealed_url", sa.Text(), nullable=False),
        sa.Column("redacted", sa.String(length=2000), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        _now("created_at"),
        _workspace_key("notification_channels", cascade=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_channels")),
        sa.UniqueConstraint("workspace_id", "name", name="uq_notification_channels"),
    )
    op.create_index(
        op.f("ix_notification_channels_workspace_id"), "notification_channels", ["workspace_id"]
    )
    op.create_table(
        "notify_rules",
        sa.Column("automation_id", UUID, nullable=False),
        sa.Column("workspace_id", UUID, nullable=False),
        sa.Column("failure_threshold", sa.Integer(), nullable=False),
        _now("seen_until"),
        sa.Column("failure_streak", sa.Integer(), nullable=False),
        sa.Column("last_failed_execution_id", UUID, nullable=True),
        _now("created_at"),
        _now("updated_at"),
        sa.CheckConstraint(
            "failure_threshold BETWEEN 1 AND 100", name=op.f("ck_notify_rules_failure_threshold")
        ),
        sa.ForeignKeyConstraint(
            ["automation_id"],
            ["automations.id"],
            name=op.f("fk_notify_rules_automation_id_automations"),
            ondelete="CASCADE",
        ),
        _workspace_key("notify_rules"),
        sa.PrimaryKeyConstraint("automation_id", name=op.f("pk_notify_rules")),
    )
    op.create_index(op.f("ix_notify_rules_workspace_id"), "notify_rules", ["workspace_id"])
    op.create_table(
        "notify_rule_channels",
        sa.Column("automation_id", UUID, nullable=False),
        sa.Column("channel_id", UUID, nullable=False),
        sa.ForeignKeyConstraint(
            ["automation_id"],
            ["notify_rules.automation_id"],
            name=op.f("fk_notify_rule_channels_automation_id_notify_rules"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["channel_id"],
            ["notification_channels.id"],
            name=op.f("fk_notify_rule_channels_channel_id_notification_channels"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "automation_id", "channel_id", name=op.f("pk_notify_rule_channels")
        ),
    )
    op.create_index(
        op.f("ix_notify_rule_channels_channel_id"), "notify_rule_channels", ["channel_id"]
    )
    op.create_table(
        "notices",
        sa.Column("id", UUID, nullable=False),
        sa.Column("workspace_id", UUID, nullable=False),
        sa.Column("automation_id", UUID, nullable=False),
        sa.Column("schedule_id", UUID, nullable=True),
        sa.Column("execution_id", UUID, nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        _now("created_at"),
        sa.CheckConstraint(KINDS, name=op.f("ck_notices_kind")),
        _workspace_key("notices"),
        sa.ForeignKeyConstraint(
            ["automation_id"],
            ["automations.id"],
            name=op.f("fk_notices_automation_id_automations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["schedules.id"],
            name=op.f("fk_notices_schedule_id_schedules"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notices")),
    )
    op.create_index(op.f("ix_notices_automation_id"), "notices", ["automation_id"])
    op.create_index(
        "ix_notices_open_failure",
        "notices",
        ["automation_id"],
        unique=True,
        postgresql_where=sa.text("kind = 'failure' AND closed_at IS NULL"),
    )
    op.create_index(
        "ix_notices_schedule_stop",
        "notices",
        ["schedule_id", "occurred_at"],
        unique=True,
        postgresql_where=sa.text("schedule_id IS NOT NULL"),
    )
    op.create_table(
        "notify_deliveries",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("workspace_id", UUID, nullable=False),
        sa.Column("notice_id", UUID, nullable=True),
        sa.Column("channel_id", UUID, nullable=True),
        sa.Column("channel_name", sa.String(length=200), nullable=False),
        sa.Column("automation_id", UUID, nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _now("created_at"),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(KINDS, name=op.f("ck_notify_deliveries_kind")),
        sa.CheckConstraint(
            "status IN ('pending', 'sending', 'ok', 'error')",
            name=op.f("ck_notify_deliveries_status"),
        ),
        _workspace_key("notify_deliveries"),
        sa.ForeignKeyConstraint(
            ["notice_id"],
            ["notices.id"],
            name=op.f("fk_notify_deliveries_notice_id_notices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["channel_id"],
            ["notification_channels.id"],
            name=op.f("fk_notify_deliveries_channel_id_notification_channels"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_deliveries")),
        sa.UniqueConstraint("notice_id", "channel_id", name="uq_notify_deliveries_notice"),
    )
    op.create_index(
        "ix_notify_deliveries_workspace",
        "notify_deliveries",
        ["workspace_id", sa.text("created_at DESC")],
    )
    op.create_index(
        "ix_notify_deliveries_unsent",
        "notify_deliveries",
        ["id"],
        postgresql_where=sa.text("status IN ('pending', 'sending')"),
    )
    op.drop_constraint(op.f("ck_audit_log_action"), "audit_log", type_="check")
    op.create_check_constraint(
        op.f("ck_audit_log_action"), "audit_log", f"action IN ({ACTIONS}, {NEW_ACTIONS})"
    )
    op.drop_constraint(op.f("ck_audit_log_target_type"), "audit_log", type_="check")
    op.create_check_constraint(
        op.f("ck_audit_log_target_type"), "audit_log", f"target_type IN ({TARGETS}, 'channel')"
    )


def downgrade() -> None:
    op.execute(f"DELETE FROM audit_log WHERE action IN ({NEW_ACTIONS}) OR target_type = 'channel'")
    op.drop_constraint(op.f("ck_audit_log_target_type"), "audit_log", type_="check")
    op.create_check_constraint(
        op.f("ck_audit_log_target_type"), "audit_log", f"target_type IN ({TARGETS})"
    )
    op.drop_constraint(op.f("ck_audit_log_action"), "audit_log", type_="check")
    op.create_check_constraint(op.f("ck_audit_log_action"), "audit_log", f"action IN ({ACTIONS})")
    op.drop_table("notify_deliveries")
    op.drop_table("notices")
    op.drop_table("notify_rule_channels")
    op.drop_table("notify_rules")
    op.drop_table("notification_channels")
