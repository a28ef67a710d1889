"""/v1/queues: depths and live workers, and the dead letters of the token's workspace.

Counts are the deployment's (no ids, no names); dead letters are this workspace's
runs' and the deployment's own jobs', as on the dashboard's Queues page. Retrying
and removing them needs the admin role and is audited (`service.queues`).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.auth import Acting
from api.problems import documented
from core.errors import NotFound
from core.vocabulary import ExecutionStatus
from db import queries
from service import queues as workspace_queues
from service.unit import read
from tasks import queues
from tasks.broker import QUEUES

router = APIRouter(
    prefix="/v1/queues", tags=["queues"], responses=documented(400, 401, 403, 404, 422)
)

Queue = StrEnum("Queue", {name.upper(): name for name in QUEUES})  # type: ignore[misc]


class QueueOut(BaseModel):
    queue: str
    queued: int
    in_flight: int
    delayed: int
    dead: int


class WorkerOut(BaseModel):
    """A live worker process, as the Queues page lists it (no execution ids: those are any
    workspace's)."""

    name: str = Field(description="host:pid")
    queues: list[str]
    running: int = Field(description="runs in flight now")
    processed: int = Field(description="messages handled since it started")
    failed: int = Field(description="of them, those that failed")
    started: datetime
    last_heartbeat: datetime


class QueuesOut(BaseModel):
    queues: list[QueueOut]
    live_workers: int = Field(description="worker consumers with a heartbeat in the last minute")
    workers: list[WorkerOut] = Field(description="worker processes reporting in the last 30 s")


class DeadLetterOut(BaseModel):
    """A dead letter: one a run, its newest, with the run's stored error and status."""

    message_id: str
    job: str
    execution_id: uuid.UUID | None
    execution_url: str | None = Field(description="the run: GET it for its steps")
    execution_status: ExecutionStatus | None = Field(description="the run's status now")
    retries: int
    failed_at: datetime
    error: str | None = Field(description="why the run failed (the run's stored error)")


class Affected(BaseModel):
    """How many dead letters the call retried or removed."""

    count: int


@router.get("")
def queue_depths(actor: Acting) -> QueuesOut:
    """What waits in each queue, and the live worker processes with what they handle."""
    read(queries.scope, actor=actor)  # a reader of the workspace, as any read
    stats = queues.all_queue_stats()
    workers = [
        WorkerOut(
            name=w.name,
            queues=list(w.queues),
            running=w.running,
            processed=w.processed,
            failed=w.failed,
            started=w.started,
            last_heartbeat=w.last_beacon,
        )
        for w in queues.worker_processes()
    ]
    return QueuesOut(
        queues=[QueueOut(**vars(q)) for q in stats],
        live_workers=len(queues.live_workers()),
        workers=workers,
    )


@router.get("/{queue}/dead-letters")
def list_dead_letters(queue: Queue, actor: Acting) -> list[DeadLetterOut]:
    """The newest dead letters of the queue that this workspace may see."""
    return [
        DeadLetterOut(
            message_id=letter.message_id,
            job=letter.actor,
            execution_id=execution_id,
            execution_url=None if execution_id is None else f"/v1/executions/{execution_id}",
            execution_status=None
            if letter.run_status is None
            else ExecutionStatus(letter.run_status),
            retries=letter.retries,
            failed_at=letter.failed_at,
            error=letter.error,
        )
        for letter in workspace_queues.dead_letters(str(queue), actor=actor)
        for execution_id in [queues.execution_of(letter)]
    ]


@router.post("/{queue}/dead-letters/{message_id}/retry", status_code=202)
def retry_dead_letter(queue: Queue, message_id: str, actor: Acting) -> Affected:
    """Send a dead letter again (its execution resumes at the step that failed); admins only."""
    if not workspace_queues.retry_dead_letter(str(queue), message_id, actor=actor):
        raise NotFound(f"no dead letter {message_id} in {queue}")
    return Affected(count=1)


@router.delete("/{queue}/dead-letters/{message_id}")
def remove_dead_letter(queue: Queue, message_id: str, actor: Acting) -> Affected:
    """Delete one dead letter; admins only."""
    if not workspace_queues.remove_dead_letter(str(queue), message_id, actor=actor):
        raise NotFound(f"no dead letter {message_id} in {queue}")
    return Affected(count=1)


@router.delete("/{queue}/dead-letters")
def purge_dead_letters(
    queue: Queue,
    actor: Acting,
    older_than_hours: Annotated[
        float | None, Query(gt=0, le=24 * 365, description="only those dead this long ago")
    ] = None,
    status: Annotated[
        list[ExecutionStatus] | None,
        Query(description="only those whose run now has one of these statuses (repeatable)"),
    ] = None,
) -> Affected:
    """Delete, in bulk, the dead letters of the queue this workspace sees: every one, or
    those older than `older_than_hours` and/or of runs with a `status`; admins only."""
    older_than = None if older_than_hours is None else timedelta(hours=older_than_hours)
    count = workspace_queues.clean_dead_letters(
        str(queue), actor=actor, older_than=older_than, statuses=[str(s) for s in status or ()]
    )
    return Affected(count=count)
