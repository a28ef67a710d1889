"""room on each page of executions and step_runs for a row's next version

A step's start (its number, the lease) and a step's answer change no indexed column:
PostgreSQL writes them as HOT updates, which touch none of the table's indexes, when the
row's page has room for the new version. Pages filled to 100 % had none, so each such
update wrote an entry in every index of the table (ten on `executions`). Applies to pages
written from now on; `VACUUM FULL` (or pg_repack) rewrites older ones, if wanted.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 10:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE executions SET (fillfactor = 80)")
    op.execute("ALTER TABLE step_runs SET (fillfactor = 90)")


def downgrade() -> None:
    op.execute("ALTER TABLE executions RESET (fillfactor)")
    op.execute("ALTER TABLE step_runs RESET (fillfactor)")
