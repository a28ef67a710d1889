"""step runs name their step by key, and a fan-out's item; a step may be `skipped`

A workflow graph's steps have keys (`core.graph`); each step run now names its step's key
(`step_key`) and, for a call of one item of a fan-out (`for_each`), that item's index
(`item`, null for any other step run). Rows of linear automations (chains) written by
earlier versions get the key a chain's step has, `step_<n>`. A step a condition left out
is stored `skipped`, with the reason in `error`. The words are written out (not imported)
so this revision keeps meaning what it meant; tests/test_db.py compares the migrated schema
with the models'.

No new index: the engine reads a run's step runs through `ix_step_runs_execution`'s
leading `execution_id`, and every index more would cost each step start of the hot path.

Older workers cannot run beside this revision: they insert step runs without a key, which
the NOT NULL refuses (docs/OPERATIONS.md).

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = ("running", "succeeded", "failed", "cancelled")
AFTER = (*BEFORE, "skipped")


def _check(words: tuple[str, ...]) -> None:
    listed = ", ".join(f"'{w}'" for w in words)
    op.create_check_constraint(op.f("ck_step_runs_status"), "step_runs", f"status IN ({listed})")


def upgrade() -> None:
    op.add_column("step_runs", sa.Column("step_key", sa.Text(), nullable=True))
    op.add_column("step_runs", sa.Column("item", sa.Integer(), nullable=True))
    op.execute("UPDATE step_runs SET step_key = 'step_' || step_number")
    op.alter_column("step_runs", "step_key", nullable=False)
    op.drop_constraint(op.f("ck_step_runs_status"), "step_runs", type_="check")
    _check(AFTER)


def downgrade() -> None:
    op.execute("DELETE FROM step_runs WHERE status = 'skipped'")
    op.drop_constraint(op.f("ck_step_runs_status"), "step_runs", type_="check")
    _check(BEFORE)
    op.drop_column("step_runs", "item")
    op.drop_column("step_runs", "step_key")
