"""Key rotation: every stored secret sealed again with the first of STEPWISE_SECRET_KEYS.

The operator's work (`stepwise reseal`), across every workspace: nothing is read out in
clear, each sealed value is only re-sealed, in every column the models mark sealed.
Functions take a session and never commit.
"""

from __future__ import annotations

from sqlalchemy import Table, select, tuple_, update
from sqlalchemy.orm import Session

from core.secrets import SecretBox
from core.settings import get_settings
from db.models import Base


def sealed_columns() -> list[tuple[Table, str]]:
    """Every column the models mark sealed (`db.models.SEALED`), as (table, column name)."""
    return [
        (table, column.name)
        for table in Base.metadata.sorted_tables
        for column in table.columns
        if column.info.get("sealed")
    ]


def reseal_secrets(session: Session) -> int:
    """Seal every value of every sealed column with the first key; returns how many."""
    box = get_settings().secret_box()
    return sum(_reseal(session, box, table, name) for table, name in sealed_columns())


def _reseal(session: Session, box: SecretBox, table: Table, name: str) -> int:
    column = table.c[name]
    key = tuple(table.primary_key.columns)
    rows = session.execute(select(*key, column).where(column.is_not(None)).with_for_update()).all()
    for *ids, sealed in rows:
        session.execute(
            update(table).where(tuple_(*key) == tuple(ids)).values({name: box.reseal(sealed)})
        )
    return len(rows)
