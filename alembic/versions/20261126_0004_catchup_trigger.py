"""the catchup trigger: missed slots run late by the misfire policy

Catch-up runs are marked so that the overlap policy queues them one behind
another instead of skipping all but one (`core.schedule.decide_overlap`). The SQL
is written out, as in 0002.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 13:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ck_executions_trigger"
BEFORE = "trigger IN ('schedule', 'manual', 'retry')"
AFTER = "trigger IN ('schedule', 'catchup', 'manual', 'retry')"


def upgrade() -> None:
    op.drop_constraint(op.f(NAME), "executions", type_="check")
    op.create_check_constraint(op.f(NAME), "executions", AFTER)


def downgrade() -> None:
    op.execute("UPDATE executions SET trigger = 'schedule' WHERE trigger = 'catchup'")
    op.drop_constraint(op.f(NAME), "executions", type_="check")
    op.create_check_constraint(op.f(NAME), "executions", BEFORE)
