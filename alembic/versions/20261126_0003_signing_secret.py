"""automations.signing_secret: the sealed key each agent call is signed with; its audit word

Automations created before this revision have none until it is rotated; their calls
go unsigned (docs/SECURITY.md).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 12:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


ACTIONS = "'create', 'edit', 'pause', 'resume', 'delete', 'run_now', 'retry', 'cancel'"


def upgrade() -> None:
    op.add_column("automations", sa.Column("signing_secret", sa.Text(), nullable=True))
    op.drop_constraint(op.f("ck_audit_log_action"), "audit_log", type_="check")
    op.create_check_constraint(
        op.f("ck_audit_log_action"), "audit_log", f"action IN ({ACTIONS}, 'rotate_secret')"
    )


def downgrade() -> None:
    op.execute("DELETE FROM audit_log WHERE action = 'rotate_secret'")
    op.drop_constraint(op.f("ck_audit_log_action"), "audit_log", type_="check")
    op.create_check_constraint(op.f("ck_audit_log_action"), "audit_log", f"action IN ({ACTIONS})")
    op.drop_column("automations", "signing_secret")
