"""Automations in the database: create, edit and archive them, and their signing secrets.

An automation is validated completely before the first write. Every function takes the
acting person (`core.access.Actor`) and reaches only their workspace's rows: another
workspace's id reads as "does not exist". The role check and the audit row of a write
are the caller's (`service.automations`); a read (`get_automation`) checks the READ role
itself, as every `db` read does. Functions take a session and never commit.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.access import Actor
from core.automation import (
    AutomationInput,
    Step,
    is_graph,
    redact_url,
    steps_data,
    validate_automation,
)
from core.errors import FieldError, NotFound, QuotaExceeded, ValidationFailed
from core.graph import graph_of, to_data
from core.secrets import new_signing_secret, not_bound_message
from core.settings import get_settings
from core.vocabulary import CompletedReason, Permission
from db.models import Automation, Execution, Schedule
from db.runs import AUTOMATION_DELETED, cancel_executions
from db.secrets import unbound_secrets
from db.workspaces import authorize, quotas

Changes = dict[str, list[Any]]  # {field: [old, new]}, as the audit log keeps an edit


def automation_values(data: AutomationInput) -> dict[str, Any]:
    return {
        "name": data.name.strip(),
        "description": data.description,
        "agent_url": data.agent_url.strip(),
        "steps": stored_steps(data),
        "project_context": data.project_context,
        "step_timeout_s": data.step_timeout_s,
        "max_retries": data.max_retries,
        "owner_id": data.owner_id,
        "request_headers": dict(data.request_headers),
        "concurrency_limit": data.concurrency_limit,
        "rate_limit_per_s": data.rate_limit_per_s,
        "urgent": data.urgent,
    }


def stored_steps(data: AutomationInput) -> list[dict[str, Any]]:
    """The steps as the `steps` column keeps them: a line's as `{name, message}`, a graph's
    in its plain form (`core.graph.to_data`: the fields left at their defaults left out)."""
    if is_graph(data.steps):
        return to_data(graph_of(steps_data(data.steps)))
    line = [s for s in data.steps if isinstance(s, Step)]
    return [{"name": s.name.strip(), "message": s.message} for s in line]


# Long texts are audited by size, not copied into every audit row.
_AUDIT_BY_SIZE = frozenset({"description", "project_context", "steps"})


def changes(row: Any, new: dict[str, Any]) -> Changes:
    """`{field: [old, new]}` for each value `new` changes on `row`, as the audit log keeps it.

    URLs are recorded redacted; long texts and the steps by their size.
    """
    changed = {}
    for name, value in new.items():
        old = getattr(row, name)
        if old == value:
            continue
        changed[name] = [_audited(name, old), _audited(name, value)]
    return changed


def _audited(name: str, value: Any) -> Any:
    if name == "input":  # may hold anything: audited by its keys' count only
        return None if value is None else f"{len(value)} keys"
    if name == "agent_url" and isinstance(value, str):
        return redact_url(value)
    if name in _AUDIT_BY_SIZE:
        return f"{len(value)} steps" if name == "steps" else f"{len(value)} characters"
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def within_quota(
    session: Session, actor: Actor, model: type[Automation | Schedule], what: str
) -> None:
    """QuotaExceeded when the workspace already holds its quota of `model` (live ones)."""
    limits = quotas(session, actor.workspace_id)
    limit = limits.max_automations if model is Automation else limits.max_schedules
    stmt = select(func.count()).select_from(model).where(model.workspace_id == actor.workspace_id)
    if model is Automation:
        stmt = stmt.where(Automation.archived_at.is_(None))
    if (session.scalar(stmt) or 0) >= limit:
        raise QuotaExceeded(
            f"this workspace has reached its quota of {limit} {what}: delete some, "
            "or ask an admin to raise the quota"
        )


def create_automation(session: Session, data: AutomationInput, *, actor: Actor) -> Automation:
    """A new automation with a fresh signing secret, within the workspace's quota; the row
    as stored (its `created_at`)."""
    settings = get_settings()
    validate_automation(data, egress=settings.egress_policy())
    check_bound(session, data, actor=actor)
    within_quota(session, actor, Automation, "automations")
    automation = Automation(
        **automation_values(data),
        workspace_id=actor.workspace_id,
        signing_secret=settings.secret_box().seal(new_signing_secret()),
    )
    session.add(automation)
    session.flush()
    session.refresh(automation)
    return automation


def check_bound(session: Session, data: AutomationInput, *, actor: Actor) -> None:
    """ValidationFailed if headers name a workspace secret that may not be sent to the URL
    they go to: an admin binds each secret to the origins it may go to. The automation's
    headers to its URL (request_headers), and each step of a graph's headers (its own, else
    the automation's) to its URL (its own, else the automation's) (steps, naming it)."""
    headers = dict(data.request_headers)
    refused = unbound_secrets(session, actor.workspace_id, headers, data.agent_url)
    if refused:
        raise ValidationFailed.single("request_headers", not_bound_message(refused, data.agent_url))
    if not is_graph(data.steps):
        return
    errors = []
    for step in graph_of(steps_data(data.steps)).steps:
        if step.agent_url is None and step.request_headers is None:
            continue  # the automation's headers to its URL: checked above
        url = step.agent_url or data.agent_url
        sent = headers if step.request_headers is None else dict(step.request_headers)
        if refused := unbound_secrets(session, actor.workspace_id, sent, url):
            headers_of = "its" if step.request_headers is not None else "the automation's"
            url_of = "its" if step.agent_url is not None else "the automation's"
            errors.append(
                FieldError(
                    "steps",
                    f"step {step.key} would send {headers_of} request_headers to {url_of} "
                    f"agent_url: {not_bound_message(refused, url)}",
                )
            )
    if errors:
        raise ValidationFailed(errors)


def live_automation(session: Session, automation_id: uuid.UUID, *, actor: Actor) -> Automation:
    """The actor's workspace's automation, not archived; NotFound otherwise."""
    automation = session.get(Automation, automation_id)
    if (
        automation is None
        or automation.archived_at is not None
        or automation.workspace_id != actor.workspace_id
    ):
        raise NotFound(f"automation {automation_id} does not exist (or was deleted)")
    return automation


def get_automation(session: Session, automation_id: uuid.UUID, *, actor: Actor) -> Automation:
    """`live_automation`, for a reader: the READ role checked first."""
    authorize(session, actor, Permission.READ)
    return live_automation(session, automation_id, actor=actor)


def rotate_signing_secret(session: Session, automation_id: uuid.UUID, *, actor: Actor) -> str:
    """A new signing secret for the automation's calls (returned in clear, for its editor to
    give to the agent); the old one stops at once."""
    automation = live_automation(session, automation_id, actor=actor)
    secret = new_signing_secret()
    automation.signing_secret = get_settings().secret_box().seal(secret)
    return secret


def signing_secret(session: Session, automation_id: uuid.UUID, *, actor: Actor) -> str | None:
    """The automation's signing secret in clear, for its editor to give to the agent."""
    sealed = live_automation(session, automation_id, actor=actor).signing_secret
    return None if sealed is None else get_settings().secret_box().open(sealed)


def call_signing_secret(session: Session, automation_id: uuid.UUID) -> str | None:
    """The signing secret, in clear, of the live automation an agent call names (None if
    there is none): for the bundled demo agent, which checks each call with the secret of
    the automation that sent it, as the worker signed it."""
    sealed = session.scalar(
        select(Automation.signing_secret).where(
            Automation.id == automation_id, Automation.archived_at.is_(None)
        )
    )
    return None if sealed is None else get_settings().secret_box().open(sealed)


def update_automation(
    session: Session, automation_id: uuid.UUID, data: AutomationInput, *, actor: Actor
) -> tuple[Automation, Changes]:
    """Every field replaced; the row as stored (its `updated_at`) and what changed."""
    validate_automation(data, egress=get_settings().egress_policy())
    check_bound(session, data, actor=actor)
    automation = live_automation(session, automation_id, actor=actor)
    new = automation_values(data)
    changed = changes(automation, new)
    for key, value in new.items():
        setattr(automation, key, value)
    session.flush()
    session.refresh(automation)
    return automation, changed


def delete_automation(session: Session, automation_id: uuid.UUID, *, actor: Actor) -> int:
    """Archive the automation, stop its schedules and cancel its open runs; returns cancelled.

    Queued and running runs alike: no step of the automation starts after this
    commits (a running one stops before its next step; see `runs.cancel_executions`).
    """
    automation = live_automation(session, automation_id, actor=actor)
    automation.archived_at = func.now()
    # Locked first, so that a dispatch in progress commits its runs before they are cancelled.
    session.execute(
        select(Schedule.id).where(Schedule.automation_id == automation_id).with_for_update()
    )
    session.execute(
        update(Schedule)
        .where(Schedule.automation_id == automation_id)
        .values(
            enabled=False, completed_reason=CompletedReason.AUTOMATION_DELETED, parked_error=None
        )
    )
    return cancel_executions(session, Execution.automation_id == automation_id, AUTOMATION_DELETED)
