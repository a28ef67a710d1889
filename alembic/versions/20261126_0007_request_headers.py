"""request headers: what an automation sends with every call, secrets by reference

`headers_ref` named a credential but was never read; it is replaced by
`request_headers` ({name: value}), whose values may reference workspace secrets
as {{ secret.NAME }}. No value of a secret is ever stored here.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 15:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "automations",
        sa.Column(
            "request_headers",
            postgresql.JSONB(),
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
        ),
    )
    op.drop_column("automations", "headers_ref")


def downgrade() -> None:
    op.add_column("automations", sa.Column("headers_ref", sa.String(length=200), nullable=True))
    op.drop_column("automations", "request_headers")
