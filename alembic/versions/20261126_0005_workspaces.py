"""workspaces: members with roles, sealed secrets, quotas; every row scoped to a workspace

Rows made before this revision move into the default workspace (the one local mode
uses and STEPWISE_ADMINS start in, `core.access.DEFAULT_WORKSPACE_ID`). The audit
words grow by the membership, queue, secret and quota actions. The SQL of the
CHECKs is written out, as in 0002.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT = "00000000-0000-0000-0000-000000000001"
SCOPED = ("automations", "schedules", "executions", "audit_log")
ACTIONS = "'create', 'edit', 'pause', 'resume', 'delete', 'run_now', 'retry', 'cancel', " + (
    "'rotate_secret'"
)
NEW_ACTIONS = (
    "'create_workspace', 'add_member', 'set_role', 'remove_member', 'retry_dead_letter', "
    "'purge_dead_letters', 'set_secret', 'delete_secret', 'set_quota'"
)
TARGETS = "'automation', 'schedule', 'execution'"


def _created(name: str = "created_at") -> sa.Column[sa.DateTime]:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "workspaces",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("max_automations", sa.Integer(), nullable=True),
        sa.Column("max_schedules", sa.Integer(), nullable=True),
        sa.Column("max_runs_per_minute", sa.Integer(), nullable=True),
        _created(),
        sa.CheckConstraint(
            "max_automations >= 0 AND max_schedules >= 0 AND max_runs_per_minute >= 0",
            name=op.f("ck_workspaces_quotas"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workspaces")),
    )
    op.create_table(
        "memberships",
        sa.Column("workspace_id", sa.UUID(), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        _created(),
        sa.CheckConstraint(
            "role IN ('viewer', 'editor', 'admin')", name=op.f("ck_memberships_role")
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_memberships_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("workspace_id", "subject", name=op.f("pk_memberships")),
    )
    op.create_index("ix_memberships_subject", "memberships", ["subject"], unique=False)
    op.create_table(
        "workspace_secrets",
        sa.Column("workspace_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("sealed", sa.Text(), nullable=False),
        _created(),
        _created("updated_at"),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_workspace_secrets_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("workspace_id", "name", name=op.f("pk_workspace_secrets")),
    )
    op.execute(f"INSERT INTO workspaces (id, name) VALUES ('{DEFAULT}', 'Default')")
    for table in SCOPED:
        op.add_column(table, sa.Column("workspace_id", sa.UUID(), nullable=True))
        op.execute(f"UPDATE {table} SET workspace_id = '{DEFAULT}'")
        op.alter_column(table, "workspace_id", nullable=False)
        op.create_foreign_key(
            op.f(f"fk_{table}_workspace_id_workspaces"),
            table,
            "workspaces",
            ["workspace_id"],
            ["id"],
        )
    op.create_index(
        op.f("ix_automations_workspace_id"), "automations", ["workspace_id"], unique=False
    )
    op.create_index(op.f("ix_schedules_workspace_id"), "schedules", ["workspace_id"], unique=False)
    op.create_index(
        "ix_executions_workspace_recent",
        "executions",
        ["workspace_id", sa.literal_column("queued_at DESC")],
        unique=False,
    )
    op.create_index(
        "ix_executions_workspace_finished",
        "executions",
        ["workspace_id", "finished_at"],
        unique=False,
    )
    op.create_index(
        "ix_audit_log_workspace",
        "audit_log",
        ["workspace_id", sa.literal_column("at DESC")],
        unique=False,
    )
    op.drop_constraint(op.f("ck_audit_log_action"), "audit_log", type_="check")
    op.create_check_constraint(
        op.f("ck_audit_log_action"), "audit_log", f"action IN ({ACTIONS}, {NEW_ACTIONS})"
    )
    op.drop_constraint(op.f("ck_audit_log_target_type"), "audit_log", type_="check")
    op.create_check_constraint(
        op.f("ck_audit_log_target_type"),
        "audit_log",
        f"target_type IN ({TARGETS}, 'workspace', 'queue', 'secret')",
    )


def downgrade() -> None:
    op.execute(f"DELETE FROM audit_log WHERE action IN ({NEW_ACTIONS})")
    op.drop_constraint(op.f("ck_audit_log_target_type"), "audit_log", type_="check")
    op.create_check_constraint(
        op.f("ck_audit_log_target_type"), "audit_log", f"target_type IN ({TARGETS})"
    )
    op.drop_constraint(op.f("ck_audit_log_action"), "audit_log", type_="check")
    op.create_check_constraint(op.f("ck_audit_log_action"), "audit_log", f"action IN ({ACTIONS})")
    op.drop_index("ix_audit_log_workspace", table_name="audit_log")
    op.drop_index("ix_executions_workspace_finished", table_name="executions")
    op.drop_index("ix_executions_workspace_recent", table_name="executions")
    op.drop_index(op.f("ix_schedules_workspace_id"), table_name="schedules")
    op.drop_index(op.f("ix_automations_workspace_id"), table_name="automations")
    for table in SCOPED:
        op.drop_constraint(op.f(f"fk_{table}_workspace_id_workspaces"), table, type_="foreignkey")
        op.drop_column(table, "workspace_id")
    op.drop_table("workspace_secrets")
    op.drop_index("ix_memberships_subject", table_name="memberships")
    op.drop_table("memberships")
    op.drop_table("workspaces")
