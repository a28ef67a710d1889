"""Definitions as code applied as one unit of work, and the demo's automation on first start.

`apply` runs a whole definitions file (`stepwise.defs.apply` reads it and says what to
write) in one transaction, the EDIT role checked first: any error and nothing is
written, a dry run always rolls back. Its writes are the API's own (`service.automations`,
`service.schedules`): the same checks, audit rows, and early dispatch after a schedule
change, sent only if the unit commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from core.automation import AutomationInput, Step
from core.schedule import ScheduleInput, parse_schedule
from core.settings import get_settings
from core.timing import ScheduleSpec
from core.vocabulary import Permission, ScheduleKind
from db import definitions
from service import acting, automations, schedules
from service.unit import Unit, unit_of_work

T = TypeVar("T")


class _RollBack(Exception):
    """Raised inside a dry run's unit: it rolls back, and nothing is sent."""


def apply(
    write: Callable[[Unit], T],
    *,
    person: str | None,
    workspace_id: uuid.UUID | None = None,
    dry_run: bool = False,
) -> T:
    """`write(unit)` as one unit of work for `person` (None: the local admin) in
    `workspace_id` or their first workspace, an editor or admin there; rolled back, with
    nothing sent, when `dry_run`. Returns what `write` returned."""
    acting_member = partial(acting.member_in, person=person, workspace_id=workspace_id)
    done: list[T] = []
    try:
        with unit_of_work(acting_member, Permission.EDIT) as unit:
            done.append(write(unit))
            if dry_run:
                raise _RollBack
    except _RollBack:
        pass
    return done[0]


def seed_demo(agent_url: str) -> bool:
    """On first start (no automation at all), the demo automation calling `agent_url` and
    its every-minute schedule, as the local admin; False when there was something already."""
    every_minute = parse_schedule(
        ScheduleInput(spec=ScheduleSpec(kind=ScheduleKind.CRON, cron_expr="* * * * *")),
        retention_days=get_settings().retention_days,
    )
    with unit_of_work(acting.local_admin, Permission.EDIT) as unit:
        if definitions.any_automation(unit.session):
            return False
        automation = automations.create_in(unit, _demo(agent_url))
        schedules.create_in(unit, automation.id, every_minute)
    return True


def _demo(agent_url: str) -> AutomationInput:
    return AutomationInput(
        name="Demo: brief every minute",
        description="Three steps against the bundled demo agent, every minute (a real brief "
        "would run daily: edit its schedule, or pause it).",
        agent_url=agent_url,
        project_context="Stepwise demo project",
        steps=(
            Step("Collect", "Collect the latest numbers."),
            Step("Summarise", "Summarise what changed."),
            Step("Report", "Write the report."),
        ),
    )
