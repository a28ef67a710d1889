"""The execution history as an export reads it: one flat row per execution, in batches.

Rows stream from a server-side cursor `batch_size` at a time, so exporting a million
executions holds one batch in memory, never the whole history. Rows and their order
are exactly those of `db.queries.list_executions` for the same filters. The files
themselves (CSV, Parquet, Excel) are written above the database, by `service.exports`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Float, Text, cast, func, select
from sqlalchemy.orm import Session

from core.access import Actor
from db.models import Automation, Execution
from db.queries import HISTORY_ORDER, AnySelect, ExecutionFilters, filter_executions, scope

# Each column of an exported row, by the name the file gives it, in file order.
_HISTORY: dict[str, Any] = {
    "execution_id": cast(Execution.id, Text),
    "automation_id": cast(Execution.automation_id, Text),
    "automation": Automation.name,
    "schedule_id": cast(Execution.schedule_id, Text),
    "trigger": Execution.trigger,
    "status": Execution.status,
    "scheduled_for": Execution.scheduled_for,
    "queued_at": Execution.queued_at,
    "started_at": Execution.started_at,
    "finished_at": Execution.finished_at,
    "duration_s": cast(func.extract("epoch", Execution.finished_at - Execution.started_at), Float),
    "attempt": Execution.attempt,
    "current_step": Execution.current_step,
    "total_steps": Execution.total_steps,
    "error": Execution.error,
}
COLUMNS = tuple(_HISTORY)


def history_select(workspace_id: uuid.UUID, filters: ExecutionFilters) -> AnySelect:
    """The export's rows: one flat line per execution of one workspace, newest first."""
    stmt = select(*(value.label(name) for name, value in _HISTORY.items())).join(
        Automation, Automation.id == Execution.automation_id
    )
    return filter_executions(stmt, workspace_id, filters).order_by(*HISTORY_ORDER)


def history_batches(
    session: Session, filters: ExecutionFilters, *, actor: Actor, batch_size: int
) -> Iterator[Sequence[Sequence[Any]]]:
    """The filtered history as batches of at most `batch_size` rows (values in COLUMNS
    order), from a server-side cursor."""
    workspace_id = scope(session, actor)
    # Core rows, not the ORM's: no per-row ORM bookkeeping on a million rows.
    result = session.connection().execute(
        history_select(workspace_id, filters).execution_options(
            yield_per=batch_size, stream_results=True
        )
    )
    yield from result.partitions(batch_size)
