"""a schedule's run started by hand is stored with its schedule, and takes no slot

"Run now" on a schedule made an execution with no schedule: its counters, its filter and
its page never showed it. It is now stored with its schedule (trigger `manual`), so the
slot key, one execution per `(schedule_id, scheduled_for)`, must leave such runs out: it
becomes a unique index over the rows whose trigger is not `manual` (same name, so a
duplicate slot still fails naming it). The word is written out (not imported) so this
revision keeps meaning what it meant.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 06:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("uq_executions_slot", "executions", type_="unique")
    op.create_index(
        "uq_executions_slot",
        "executions",
        ["schedule_id", "scheduled_for"],
        unique=True,
        postgresql_where=sa.text("trigger <> 'manual'"),
    )


def downgrade() -> None:
    # Runs started by hand go back to having no schedule, as earlier versions stored them.
    op.execute("UPDATE executions SET schedule_id = NULL WHERE trigger = 'manual'")
    op.drop_index("uq_executions_slot", table_name="executions")
    op.create_unique_constraint(
        "uq_executions_slot", "executions", ["schedule_id", "scheduled_for"]
    )
