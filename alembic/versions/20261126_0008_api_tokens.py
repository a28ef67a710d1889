"""API tokens: one workspace and one role each, stored as a SHA-256 hash only

Also the Idempotency-Key of API creates (per token), and audit rows for creating and
revoking tokens.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIONS = (
    "'create', 'edit', 'pause', 'resume', 'delete', 'run_now', 'retry', 'cancel', "
    "'rotate_secret', 'create_workspace', 'add_member', 'set_role', 'remove_member', "
    "'retry_dead_letter', 'purge_dead_letters', 'set_secret', 'delete_secret', 'set_quota'"
)
NEW_ACTIONS = "'create_token', 'revoke_token'"
TARGETS = "'automation', 'schedule', 'execution', 'workspace', 'queue', 'secret'"


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("workspace_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "role IN ('viewer', 'editor', 'admin')", name=op.f("ck_api_tokens_role")
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_api_tokens_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(
        op.f("ix_api_tokens_workspace_id"), "api_tokens", ["workspace_id"], unique=False
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("token_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("target_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["api_tokens.id"],
            name=op.f("fk_idempotency_keys_token_id_api_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.drop_constraint(op.f("ck_audit_log_action"), "audit_log", type_="check")
    op.create_check_constraint(
        op.f("ck_audit_log_action"), "audit_log", f"action IN ({ACTIONS}, {NEW_ACTIONS})"
    )
    op.drop_constraint(op.f("ck_audit_log_target_type"), "audit_log", type_="check")
    op.create_check_constraint(
        op.f("ck_audit_log_target_type"), "audit_log", f"target_type IN ({TARGETS}, 'token')"
    )


def downgrade() -> None:
    op.execute(f"DELETE FROM audit_log WHERE action IN ({NEW_ACTIONS}) OR target_type = 'token'")
    op.drop_constraint(op.f("ck_audit_log_target_type"), "audit_log", type_="check")
    op.create_check_constraint(
        op.f("ck_audit_log_target_type"), "audit_log", f"target_type IN ({TARGETS})"
    )
    op.drop_constraint(op.f("ck_audit_log_action"), "audit_log", type_="check")
    op.create_check_constraint(op.f("ck_audit_log_action"), "audit_log", f"action IN ({ACTIONS})")
    op.drop_table("idempotency_keys")
    op.drop_index(op.f("ix_api_tokens_workspace_id"), table_name="api_tokens")
    op.drop_table("api_tokens")
