"""urgent automations: their runs go to the urgent queue, ahead of any backlog

False for every existing automation.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26 18:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "automations",
        sa.Column("urgent", sa.Boolean(), nullable=False, server_default=sa.text("false")),
    )


def downgrade() -> None:
    op.drop_column("automations", "urgent")
