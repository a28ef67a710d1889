"""Reading the audit log: who did what to which automation, schedule or execution, when.

Rows are written in the same transaction as the change they record (`service.unit.Unit.audit`,
and the `db` modules that still audit their own writes); this module only reads them,
newest first, narrowed by who / what / when, and turns them into a CSV a person can open
safely in a spreadsheet.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.access import Actor
from core.vocabulary import Permission
from db.exports import neutralise_formulas
from db.models import AuditLog
from db.workspaces import authorize


@dataclass(frozen=True)
class AuditFilters:
    """What the audit list is narrowed to; empty means "all"."""

    actor: str = ""  # a part of the actor's name, any case
    actions: tuple[str, ...] = ()
    target_types: tuple[str, ...] = ()
    target_id: uuid.UUID | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


@dataclass(frozen=True)
class AuditRow:
    at: datetime
    actor: str
    action: str
    target_type: str
    target_id: uuid.UUID
    details: dict[str, Any]


def list_audit(
    session: Session, filters: AuditFilters, *, actor: Actor, limit: int = 200
) -> list[AuditRow]:
    """The newest `limit` audit rows of the actor's workspace matching `filters`."""
    authorize(session, actor, Permission.READ)
    stmt = select(
        AuditLog.at,
        AuditLog.actor,
        AuditLog.action,
        AuditLog.target_type,
        AuditLog.target_id,
        AuditLog.details,
    ).where(AuditLog.workspace_id == actor.workspace_id)
    if filters.actor.strip():
        stmt = stmt.where(AuditLog.actor.icontains(filters.actor.strip(), autoescape=True))
    if filters.actions:
        stmt = stmt.where(AuditLog.action.in_(filters.actions))
    if filters.target_types:
        stmt = stmt.where(AuditLog.target_type.in_(filters.target_types))
    if filters.target_id is not None:
        stmt = stmt.where(AuditLog.target_id == filters.target_id)
    if filters.since is not None:
        stmt = stmt.where(AuditLog.at >= filters.since)
    if filters.until is not None:
        stmt = stmt.where(AuditLog.at < filters.until)
    rows = session.execute(stmt.order_by(AuditLog.at.desc(), AuditLog.id.desc()).limit(limit))
    return [AuditRow(**row._mapping) for row in rows]


AUDIT_SCHEMA = pa.schema(
    [
        ("at", pa.timestamp("us", tz="UTC")),
        ("actor", pa.string()),
        ("action", pa.string()),
        ("target_type", pa.string()),
        ("target_id", pa.string()),
        ("details", pa.string()),
    ]
)


def audit_csv(rows: list[AuditRow]) -> bytes:
    """The rows as CSV, with names people typed unable to act as spreadsheet formulas."""
    table = pa.Table.from_pylist(
        [
            {
                "at": r.at,
                "actor": r.actor,
                "action": r.action,
                "target_type": r.target_type,
                "target_id": str(r.target_id),
                "details": json.dumps(r.details, ensure_ascii=False, sort_keys=True),
            }
            for r in rows
        ],
        schema=AUDIT_SCHEMA,
    )
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(neutralise_formulas(table, ("actor", "details")), sink)
    return bytes(sink.getvalue().to_pybytes())
