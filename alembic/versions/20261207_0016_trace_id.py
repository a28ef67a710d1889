"""executions.trace_id: the run's trace, when tracing is on

The runner writes it with a step's start (`db.runs.start_step`) when
OTEL_EXPORTER_OTLP_ENDPOINT is set; the execution's page shows it, so an operator finds
the run's trace in their tracing backend. 32 hex digits (W3C trace id); NULL for a run
that was not traced. Adding a NULL column rewrites nothing: older workers run beside it.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("executions", sa.Column("trace_id", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("executions", "trace_id")
