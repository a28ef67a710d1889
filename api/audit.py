"""/v1/audit: who did what, newest first, narrowed by who / what / when."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from api.auth import Acting
from api.problems import documented
from api.responses import AuditOut
from api.schemas import utc
from core.errors import ValidationFailed
from core.limits import MAX_OWNER
from core.text import UNSTORABLE, storable
from core.vocabulary import AuditAction, AuditTarget
from db.audit import AuditFilters, list_audit
from service.unit import read

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=documented(400, 401, 403, 422))


@router.get("")
def list_audit_rows(
    actor: Acting,
    who: Annotated[str, Query(max_length=MAX_OWNER, description="part of the actor's name")] = "",
    action: Annotated[list[AuditAction] | None, Query()] = None,
    target_type: Annotated[list[AuditTarget] | None, Query()] = None,
    target_id: uuid.UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[AuditOut]:
    if not storable(who):
        raise ValidationFailed.single("who", UNSTORABLE)
    filters = AuditFilters(
        actor=who,
        actions=tuple(action or ()),
        target_types=tuple(target_type or ()),
        target_id=target_id,
        since=utc(since),
        until=utc(until),
    )
    return [
        AuditOut.model_validate(row) for row in read(list_audit, filters, actor=actor, limit=limit)
    ]
