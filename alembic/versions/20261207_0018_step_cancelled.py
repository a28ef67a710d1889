"""a step cut by a cancel is `cancelled`, not `failed`

Cancelling a run cuts the step it has at the agent; that step was stored as failed (a red
bar for a failure nobody had). `step_runs.status` may now be `cancelled`; rows written by
earlier versions with the cancel's error are mapped to it. The words are written out (not
imported) so this revision keeps meaning what it meant; tests/test_db.py compares the
migrated schema with the models'.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = ("running", "succeeded", "failed")
AFTER = (*BEFORE, "cancelled")
CANCELLED_ERROR = "the run was cancelled while this step was at the agent%"


def _check(words: tuple[str, ...]) -> None:
    listed = ", ".join(f"'{w}'" for w in words)
    op.create_check_constraint(op.f("ck_step_runs_status"), "step_runs", f"status IN ({listed})")


def upgrade() -> None:
    op.drop_constraint(op.f("ck_step_runs_status"), "step_runs", type_="check")
    _check(AFTER)
    steps = sa.table("step_runs", sa.column("status", sa.String), sa.column("error", sa.String))
    op.execute(
        steps.update()
        .where(steps.c.status == "failed", steps.c.error.like(CANCELLED_ERROR))
        .values(status="cancelled")
    )


def downgrade() -> None:
    steps = sa.table("step_runs", sa.column("status", sa.String))
    op.execute(steps.update().where(steps.c.status == "cancelled").values(status="failed"))
    op.drop_constraint(op.f("ck_step_runs_status"), "step_runs", type_="check")
    _check(BEFORE)
