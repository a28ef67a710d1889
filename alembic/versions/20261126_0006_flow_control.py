"""flow control: an automation's concurrency limit and rate limit over every worker

Both are NULL (no limit) for every existing automation. The bounds come from
core/limits.py, written out here as the CHECKs `db/models.py` generates.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("automations", sa.Column("concurrency_limit", sa.Integer(), nullable=True))
    op.add_column("automations", sa.Column("rate_limit_per_s", sa.Double(), nullable=True))
    op.create_check_constraint(
        op.f("ck_automations_concurrency_limit"),
        "automations",
        "concurrency_limit BETWEEN 1 AND 1000",
    )
    op.create_check_constraint(
        op.f("ck_automations_rate_limit"),
        "automations",
        "rate_limit_per_s BETWEEN 0.01 AND 1000",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_automations_rate_limit"), "automations", type_="check")
    op.drop_constraint(op.f("ck_automations_concurrency_limit"), "automations", type_="check")
    op.drop_column("automations", "rate_limit_per_s")
    op.drop_column("automations", "concurrency_limit")
