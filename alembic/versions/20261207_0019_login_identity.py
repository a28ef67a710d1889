"""a membership is bound to the login provider's identity (issuer, subject)

With login, a person was whoever the provider's `email` claim (or else `sub`) named, verified
or not. A membership row now records the identity that accepted it: the first login whose
verified e-mail matches it binds it, and only that identity acts as the member after.
Rows made before are unbound; each is bound at its member's next login.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("memberships", sa.Column("login_issuer", sa.String(2000), nullable=True))
    op.add_column("memberships", sa.Column("login_subject", sa.String(2000), nullable=True))
    op.create_check_constraint(
        "login_identity", "memberships", "(login_issuer IS NULL) = (login_subject IS NULL)"
    )
    op.create_index("ix_memberships_login", "memberships", ["login_issuer", "login_subject"])


def downgrade() -> None:
    op.drop_index("ix_memberships_login", table_name="memberships")
    op.drop_constraint("login_identity", "memberships", type_="check")
    op.drop_column("memberships", "login_subject")
    op.drop_column("memberships", "login_issuer")
