"""Transitional: what `db.hooks` still reaches by this module's name (a webhook's run).

The writes that lived here are split by noun (`db.automations`, `db.schedules`,
`db.executions`) and checked and audited by `service`. A webhook's run is the one write
still started inside `db` (`db.hooks.start_hook_run`); it is audited here, as
`service.executions` audits a run started now, until it moves up with the other webhook
writes. Then this module goes.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from core.access import Actor
from core.run_input import RunInput
from core.vocabulary import AuditAction, AuditTarget, Trigger
from db.automations import get_automation
from db.executions import create_manual_execution as _create
from db.models import Execution
from db.workspaces import audit

__all__ = ["create_manual_execution", "get_automation"]


def create_manual_execution(
    session: Session,
    automation_id: uuid.UUID,
    *,
    actor: Actor,
    run_input: RunInput | None = None,
    trigger: Trigger = Trigger.MANUAL,
    **details: Any,
) -> Execution:
    """`db.executions.create_manual_execution`, audited (`details` go to the audit row)."""
    execution = _create(session, automation_id, actor=actor, run_input=run_input, trigger=trigger)
    if trigger != Trigger.MANUAL:
        details["trigger"] = str(trigger)
    audit(
        session,
        actor,
        AuditAction.RUN_NOW,
        AuditTarget.AUTOMATION,
        automation_id,
        execution_id=str(execution.id),
        with_input=run_input is not None,
        **details,
    )
    return execution
