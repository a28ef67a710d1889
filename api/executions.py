"""/v1/executions: one with its steps, lists with filters and a cursor, cancel, retry."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, status

from api.auth import Acting
from api.problems import documented
from api.responses import ExecutionDetailOut, ExecutionOut, ExecutionPage, RunStarted
from api.schemas import utc
from core.errors import NotFound, ValidationFailed
from core.limits import MAX_API_PAGE
from core.vocabulary import ExecutionStatus, Trigger
from db import queries
from db.queries import ExecutionFilters, HistoryKey
from service import executions
from service.unit import read

MAX_PAGE = MAX_API_PAGE

router = APIRouter(
    prefix="/v1/executions",
    tags=["executions"],
    responses=documented(400, 401, 403, 404, 409, 422),
)


def encode_cursor(key: HistoryKey) -> str:
    raw = json.dumps([key.queued_at.isoformat(), key.scheduled_for.isoformat(), str(key.id)])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> HistoryKey:
    """The key a cursor of ours names; ValidationFailed ("cursor") for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        queued_at, scheduled_for, execution_id = json.loads(raw)
        key = HistoryKey(
            datetime.fromisoformat(queued_at),
            datetime.fromisoformat(scheduled_for),
            uuid.UUID(execution_id),
        )
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ValidationFailed.single("cursor", "is not a cursor this API gave out") from None
    if key.queued_at.utcoffset() is None or key.scheduled_for.utcoffset() is None:
        raise ValidationFailed.single("cursor", "is not a cursor this API gave out")
    return key


@router.get("")
def list_executions(
    actor: Acting,
    status_: Annotated[list[ExecutionStatus] | None, Query(alias="status")] = None,
    automation_id: uuid.UUID | None = None,
    schedule_id: uuid.UUID | None = None,
    trigger: Trigger | None = None,
    since: Annotated[datetime | None, Query(description="queued at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="queued before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> ExecutionPage:
    """Execution history, newest first; follow `next_cursor` for older ones."""
    filters = ExecutionFilters(
        statuses=tuple(status_ or ()),
        automation_id=automation_id,
        schedule_id=schedule_id,
        trigger=trigger,
        since=utc(since),
        until=utc(until),
    )
    after = None if cursor is None else decode_cursor(cursor)
    page = read(queries.list_executions, filters, actor=actor, limit=limit, after=after)
    last = page.rows[-1] if page.rows and page.has_more else None
    return ExecutionPage(
        items=[ExecutionOut.model_validate(row) for row in page.rows],
        next_cursor=None if last is None else encode_cursor(HistoryKey.of(last)),
    )


def execution_answer(execution_id: uuid.UUID, actor: Acting) -> ExecutionDetailOut:
    """The execution with its steps, as every call on one answers."""
    detail = read(queries.execution_detail, execution_id, actor=actor)
    if detail is None:
        raise NotFound(f"execution {execution_id} does not exist")
    return ExecutionDetailOut.of_detail(detail)


@router.get("/{execution_id}")
def get_execution(execution_id: uuid.UUID, actor: Acting) -> ExecutionDetailOut:
    """The execution with every attempt of every step, in order."""
    return execution_answer(execution_id, actor)


@router.post("/{execution_id}/cancel")
def cancel_execution(execution_id: uuid.UUID, actor: Acting) -> ExecutionDetailOut:
    """Cancel a queued or running execution (a running one stops before its next step)."""
    executions.cancel(execution_id, actor=actor)
    return execution_answer(execution_id, actor)


@router.post("/{execution_id}/retry", status_code=status.HTTP_202_ACCEPTED)
def retry_execution(execution_id: uuid.UUID, actor: Acting) -> RunStarted:
    """Run a failed or cancelled execution again from the step that did not succeed."""
    executions.retry(execution_id, actor=actor)
    return RunStarted(execution_id=execution_id)
