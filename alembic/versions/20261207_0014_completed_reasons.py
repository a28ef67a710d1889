"""a schedule's completed reason is one of CompletedReason's words; dispatch's error apart

`schedules.completed_reason` held free text that other code matched by prefix
("disabled: <error>"). It now holds one of `core.vocabulary.CompletedReason`'s words
(a CHECK says which), and a schedule dispatch could not plan keeps its error in the
new `parked_error` column. Rows written by earlier versions are mapped: the parked
ones split into reason and error, the older wordings ("end_at reached", "max_runs
reached", "run_at has passed") to today's. The words are written out (not imported)
so this revision keeps meaning what it meant; tests/test_db.py compares the migrated
schema with the models'.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARKED = "disabled: cannot be planned"
REASONS = (
    "ran once",
    "reached its end",
    "reached its maximum number of runs",
    "no further slot",
    "its run time has passed",
    "automation deleted",
    PARKED,
)
# Older wordings of the same reasons.
RENAMED = {
    "end_at reached": "reached its end",
    "max_runs reached": "reached its maximum number of runs",
    "run_at has passed": "its run time has passed",
}
PARKED_PREFIX = "disabled: "
MAX_REASON = 200


def upgrade() -> None:
    op.add_column("schedules", sa.Column("parked_error", sa.String(MAX_REASON), nullable=True))
    schedules = sa.table(
        "schedules",
        sa.column("completed_reason", sa.String),
        sa.column("parked_error", sa.String),
    )
    reason = schedules.c.completed_reason
    op.execute(
        schedules.update()
        .where(reason.startswith(PARKED_PREFIX), reason != PARKED)
        .values(
            parked_error=sa.func.substr(reason, len(PARKED_PREFIX) + 1),
            completed_reason=PARKED,
        )
    )
    for old, new in RENAMED.items():
        op.execute(schedules.update().where(reason == old).values(completed_reason=new))
    # Nothing else was ever written; should a row hold another text, it still stopped
    # for good, with no slot to run.
    op.execute(
        schedules.update()
        .where(reason.is_not(None), reason.not_in(REASONS))
        .values(completed_reason="no further slot")
    )
    words = ", ".join(f"'{r}'" for r in REASONS)
    op.create_check_constraint(
        op.f("ck_schedules_completed_reason"),
        "schedules",
        f"completed_reason IS NULL OR completed_reason IN ({words})",
    )
    op.create_check_constraint(
        op.f("ck_schedules_parked_error"),
        "schedules",
        f"parked_error IS NULL OR completed_reason = '{PARKED}'",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_schedules_parked_error"), "schedules", type_="check")
    op.drop_constraint(op.f("ck_schedules_completed_reason"), "schedules", type_="check")
    schedules = sa.table(
        "schedules",
        sa.column("completed_reason", sa.String),
        sa.column("parked_error", sa.String),
    )
    # The earlier versions read a parked schedule by its "disabled: <error>" text.
    op.execute(
        schedules.update()
        .where(schedules.c.completed_reason == PARKED)
        .values(
            completed_reason=sa.func.left(
                PARKED_PREFIX + sa.func.coalesce(schedules.c.parked_error, "cannot be planned"),
                MAX_REASON,
            )
        )
    )
    op.drop_column("schedules", "parked_error")
