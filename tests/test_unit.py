"""The unit of work (`service.unit`), on the real PostgreSQL: what follows a commit runs
only after it, the role is checked before anything is written, a read cannot write."""

from __future__ import annotations

import logging
import uuid

import pytest
from sqlalchemy.exc import DBAPIError

from core.errors import Forbidden
from core.vocabulary import AuditAction, AuditTarget, Permission, Role
from db import automations
from db.models import Automation
from service.unit import read, unit_of_work
from testkit.factories import (
    ADMIN,
    automation_input,
    fetch,
    make_automation,
    person,
    row_counts,
    table_snapshot,
)

pytestmark = pytest.mark.usefixtures("db")


def test_after_commit_work_runs_once_the_unit_has_committed() -> None:
    # given a unit that writes an automation and registers work for after the commit
    seen: list[bool] = []
    with unit_of_work(ADMIN, Permission.EDIT) as unit:
        made = automations.create_automation(unit.session, automation_input(), actor=ADMIN)
        made_id = made.id

        def visible_then() -> None:
            seen.append(fetch(Automation, made_id) is not None)

        unit.after_commit(visible_then)
        unit.after_commit(visible_then)  # the same work twice runs once
        # when the unit has not ended yet, then nothing ran
        assert seen == []
    # then it ran once, after the commit: another transaction sees the row
    assert seen == [True]


def test_after_commit_work_never_runs_when_the_unit_rolls_back() -> None:
    ran: list[str] = []
    before = row_counts()
    with pytest.raises(RuntimeError), unit_of_work(ADMIN, Permission.EDIT) as unit:
        automations.create_automation(unit.session, automation_input(), actor=ADMIN)
        unit.after_commit(lambda: ran.append("sent"))
        raise RuntimeError("the write fails after the row was added")
    assert ran == [] and row_counts() == before


def test_best_effort_work_that_fails_is_logged_and_the_write_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def redis_away() -> None:
        raise ConnectionError("Redis is away")

    with caplog.at_level(logging.WARNING), unit_of_work(ADMIN, Permission.EDIT) as unit:
        made = automations.create_automation(unit.session, automation_input(), actor=ADMIN)
        made_id = made.id
        unit.after_commit(redis_away, best_effort=True)
    assert fetch(Automation, made_id) is not None
    assert "a follow-up was not sent (ConnectionError)" in caplog.text


def test_the_role_is_checked_before_anything_is_written() -> None:
    # given a viewer of the workspace
    viewer = person("vic@example.com", Role.VIEWER)
    before = table_snapshot()
    # when a unit that edits is opened for them, then it is refused and writes nothing
    with pytest.raises(Forbidden), unit_of_work(viewer, Permission.EDIT) as unit:
        unit.audit(AuditAction.CREATE, AuditTarget.AUTOMATION, uuid.uuid4())
    assert table_snapshot() == before


def test_a_write_reached_through_read_fails_in_the_database() -> None:
    # given an automation
    automation_id = make_automation()
    # when a write function is called through the read helper (no role check, no audit)
    with pytest.raises(DBAPIError, match="read-only transaction"):
        read(automations.delete_automation, automation_id, actor=ADMIN)
    # then the database refused it: the automation is not archived
    assert fetch(Automation, automation_id).archived_at is None


def test_an_idempotency_key_makes_its_object_once() -> None:
    # given an API token's actor (keys belong to tokens)
    from service import tokens

    made = tokens.create_token("ci", Role.EDITOR, actor=ADMIN)
    actor = tokens.authenticate(made.token)
    assert actor is not None
    key = ("key-1", "fingerprint of the request")
    # when the same key and request make an automation twice
    results = []
    for _ in range(2):
        with unit_of_work(actor, Permission.EDIT) as unit:
            results.append(
                unit.idempotent(
                    key,
                    lambda: (
                        automations.create_automation(
                            unit.session,
                            automation_input(),
                            actor=actor,
                        ).id
                    ),
                )
            )
    # then the first made it and the repeat answered with its id, making nothing
    (first, made_now), (again, made_again) = results
    assert (made_now, made_again) == (True, False) and first == again
    assert row_counts()["automations"] == 1
