"""Pause with a note and backfill a range: the rules (no server), the db commands and the API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from core.backfill import backfill_slots, parse_range, pause_note
from core.errors import Forbidden, NotFound, QuotaExceeded, ValidationFailed
from core.limits import MAX_BACKFILL_SLOTS, MAX_PAUSE_NOTE
from core.timing import ScheduleSpec, parse_timing
from core.vocabulary import ExecutionStatus, Role, Trigger
from db import backfill, queries
from db.audit import AuditFilters, list_audit
from db.claims import claim_execution
from db.models import Workspace
from db.session import session_scope
from service import schedules
from testkit.api import bearer, make_token, writes
from testkit.factories import (
    ADMIN,
    add_executions,
    executions_of,
    make_automation,
    make_schedule,
    make_workspace,
    now,
    person,
    schedule,
    table_snapshot,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOURLY = parse_timing(ScheduleSpec(kind="cron", cron_expr="0 * * * *"))


# --- the rules ---------------------------------------------------------------------------


def test_a_range_is_checked_once_with_every_problem_named() -> None:
    with pytest.raises(ValidationFailed) as missing:
        parse_range(None, datetime(2026, 3, 1), now=NOW, retention_days=90)
    assert {(e.field, e.message) for e in missing.value.errors} == {
        ("from", "is required"),
        ("to", "must include a timezone (got a naive datetime)"),
    }
    with pytest.raises(ValidationFailed) as backwards:
        parse_range(NOW, NOW - timedelta(hours=1), now=NOW, retention_days=90)
    assert backwards.value.for_field("to") == "must be after from"
    with pytest.raises(ValidationFailed) as future:
        parse_range(NOW, NOW + timedelta(hours=1), now=NOW, retention_days=90)
    assert "must not be in the future" in str(future.value)
    with pytest.raises(ValidationFailed) as old:
        parse_range(NOW - timedelta(days=91), NOW, now=NOW, retention_days=90)
    assert old.value.for_field("from") == (
        "must be within the last 90 days (older history is deleted)"
    )


def test_the_slots_of_a_range_are_listed_and_capped() -> None:
    # given an hourly schedule
    span = parse_range(NOW - timedelta(hours=3), NOW, now=NOW, retention_days=90)
    # then [from, to) holds the three hours before noon, noon excluded
    assert backfill_slots(HOURLY, span) == [NOW - timedelta(hours=h) for h in (3, 2, 1)]
    # and a range with more slots than the cap is refused, saying how many it holds
    wide = parse_range(
        NOW - timedelta(hours=MAX_BACKFILL_SLOTS + 1), NOW, now=NOW, retention_days=90
    )
    with pytest.raises(ValidationFailed) as refused:
        backfill_slots(HOURLY, wide)
    assert f"this range holds {MAX_BACKFILL_SLOTS + 1} runs" in str(refused.value)


def test_a_pause_note_is_trimmed_and_capped() -> None:
    assert pause_note("  waiting for the vendor  ") == "waiting for the vendor"
    assert pause_note("   ") is None and pause_note(None) is None
    with pytest.raises(ValidationFailed) as long:
        pause_note("x" * (MAX_PAUSE_NOTE + 1))
    assert long.value.for_field("note") == f"must be at most {MAX_PAUSE_NOTE} characters (got 501)"


# --- the db commands --------------------------------------------------------------------------

pytestmark_db = pytest.mark.usefixtures("db")


def hourly_schedule(**overrides: Any) -> Any:
    automation_id = make_automation(name="Hourly report")
    return make_schedule(automation_id, cron_expr="0 * * * *", **overrides)


def last_hours(hours: int) -> tuple[datetime, datetime]:
    end = now().replace(minute=0, second=0, microsecond=0)
    return end - timedelta(hours=hours), end


@pytestmark_db
def test_a_pause_note_is_kept_with_who_and_when_shown_and_cleared_on_resume() -> None:
    # given an active schedule
    schedule_id = hourly_schedule()
    # when paused with a note
    schedules.pause(schedule_id, actor=ADMIN, note=" vendor API down ")
    # then the list row carries the note, who paused it and when, and the audit has it
    with session_scope() as session:
        row = queries.get_schedule_row(session, schedule_id, actor=ADMIN)
        audit = list_audit(session, AuditFilters(), actor=ADMIN)
    assert row is not None and row.state == "paused"
    assert (row.pause_note, row.paused_by) == ("vendor API down", "test")
    assert row.paused_at is not None
    assert audit[0].action == "pause" and audit[0].details["note"] == "vendor API down"
    # when resumed, then the note is gone
    schedules.resume(schedule_id, actor=ADMIN)
    stored = schedule(schedule_id)
    assert (stored.pause_note, stored.paused_by, stored.paused_at) == (None, None, None)


@pytestmark_db
def test_an_over_long_pause_note_writes_nothing() -> None:
    schedule_id = hourly_schedule()
    before = table_snapshot()
    with pytest.raises(ValidationFailed):
        schedules.pause(schedule_id, actor=ADMIN, note="x" * (MAX_PAUSE_NOTE + 1))
    assert table_snapshot() == before


@pytestmark_db
def test_a_backfill_makes_one_run_per_missing_slot_and_twice_makes_nothing_new() -> None:
    # given an hourly schedule whose slot two hours ago already ran
    schedule_id = hourly_schedule()
    start, end = last_hours(4)
    automation_id = schedule(schedule_id).automation_id
    (ran,) = add_executions(
        automation_id,
        [
            {
                "schedule_id": schedule_id,
                "trigger": "schedule",
                "scheduled_for": end - timedelta(hours=2),
            }
        ],
    )
    # when the last four hours are backfilled
    with session_scope() as session:
        seen = backfill.preview_backfill(session, schedule_id, start, end, actor=ADMIN)
        done = backfill.backfill(session, schedule_id, start, end, actor=ADMIN)
    # then the preview said 4 slots, 1 present; three queued backfill runs were made
    assert (seen.slots, seen.present) == (4, 1)
    assert done.present == 1 and len(done.created) == 3
    rows = executions_of(schedule_id)
    assert [r.scheduled_for for r in rows] == [start + timedelta(hours=h) for h in range(4)]
    made = [r for r in rows if r.id != ran]
    assert {(r.trigger, r.status) for r in made} == {(Trigger.BACKFILL, ExecutionStatus.QUEUED)}
    assert [r.id for r in made] == done.execution_ids
    # when the same range is backfilled again, then nothing new is made
    with session_scope() as session:
        again = backfill.backfill(session, schedule_id, start, end, actor=ADMIN)
    assert (again.created, again.present) == ([], 4)
    assert len(executions_of(schedule_id)) == 4


@pytestmark_db
def test_a_backfilled_run_is_not_held_back_by_the_overlap_policy() -> None:
    # given a skip-overlap schedule whose latest slot already started
    schedule_id = hourly_schedule()
    start, end = last_hours(2)
    automation_id = schedule(schedule_id).automation_id
    add_executions(
        automation_id,
        [{"schedule_id": schedule_id, "trigger": "schedule", "scheduled_for": end}],
    )
    with session_scope() as session:
        done = backfill.backfill(session, schedule_id, start, end, actor=ADMIN)
    # when a worker claims the earlier, backfilled slot
    with session_scope() as session:
        claimed = claim_execution(session, done.execution_ids[0], lease_s=30)
    # then it runs (a scheduled slot this late would be skipped as superseded)
    assert not isinstance(claimed, str), claimed


@pytestmark_db
def test_a_backfill_keeps_to_the_quota_the_role_and_the_workspace() -> None:
    schedule_id = hourly_schedule()
    start, end = last_hours(3)
    # a viewer may not, another workspace does not find it, a full quota refuses:
    # nothing is written
    viewer = person("vera@example.com", Role.VIEWER)
    theirs = make_workspace()
    with session_scope() as session:
        session.execute(update(Workspace).values(max_runs_per_minute=2))
    before = table_snapshot()
    with pytest.raises(Forbidden):
        schedules.backfill(schedule_id, start, end, actor=viewer)
    with pytest.raises(NotFound):
        schedules.backfill(schedule_id, start, end, actor=theirs)
    with pytest.raises(QuotaExceeded) as quota:
        schedules.backfill(schedule_id, start, end, actor=ADMIN)
    assert "would pass its quota of 2 runs per minute with 3 more" in str(quota.value)
    assert table_snapshot() == before


# --- the API -------------------------------------------------------------------------------


def test_the_api_pauses_with_a_note_and_refuses_a_long_one(client: TestClient) -> None:
    schedule_id = hourly_schedule()
    admin = bearer(make_token())
    # a long note is refused with its field, writing nothing
    before = writes()
    long = client.post(
        f"/v1/schedules/{schedule_id}/pause", json={"note": "x" * 501}, headers=admin
    )
    assert long.status_code == 422 and long.json()["errors"][0]["field"] == "note"
    assert writes() == before
    # a note is kept and read back; a pause without a body still works
    paused = client.post(
        f"/v1/schedules/{schedule_id}/pause", json={"note": "vendor down"}, headers=admin
    )
    assert paused.status_code == 200, paused.text
    assert (paused.json()["pause_note"], paused.json()["paused_by"]) == (
        "vendor down",
        "API token ci",
    )
    again = client.post(f"/v1/schedules/{schedule_id}/pause", headers=admin)
    assert again.status_code == 200 and again.json()["pause_note"] is None


def test_the_api_backfills_a_range_once(client: TestClient, redis_client: Any) -> None:
    # given an hourly schedule and the last three hours
    schedule_id = hourly_schedule()
    admin = bearer(make_token())
    start, end = last_hours(3)
    body = {"from": start.isoformat(), "to": end.isoformat()}
    # when previewed, then backfilled twice
    preview = client.post(f"/v1/schedules/{schedule_id}/backfill/preview", json=body, headers=admin)
    assert preview.json() == {"slots": 3, "present": 0}
    first = client.post(f"/v1/schedules/{schedule_id}/backfill", json=body, headers=admin)
    second = client.post(f"/v1/schedules/{schedule_id}/backfill", json=body, headers=admin)
    # then the first made three runs, returned by id, and the second none
    assert first.status_code == 202, first.text
    assert first.json()["created"] == 3 and first.json()["skipped_present"] == 0
    assert [str(r.id) for r in executions_of(schedule_id)] == first.json()["execution_ids"]
    assert second.json() == {"execution_ids": [], "created": 0, "skipped_present": 3}
    # and each run was sent to the workers
    assert redis_client.exists("dramatiq:default") or redis_client.exists("dramatiq:default.DQ")


def test_the_api_refuses_a_bad_backfill_and_another_workspaces_schedule(
    client: TestClient,
) -> None:
    schedule_id = hourly_schedule()
    start, end = last_hours(3)
    body = {"from": start.isoformat(), "to": end.isoformat()}
    admin = bearer(make_token())
    theirs = bearer(make_token(make_workspace()))
    viewer = bearer(make_token(role=Role.VIEWER))
    before = writes()
    for bad, field in (
        ({"from": end.isoformat(), "to": start.isoformat()}, "to"),
        ({"from": start.isoformat(), "to": (end + timedelta(days=1)).isoformat()}, "to"),
        ({"from": (end - timedelta(days=30)).isoformat(), "to": end.isoformat()}, "to"),
    ):
        answer = client.post(f"/v1/schedules/{schedule_id}/backfill", json=bad, headers=admin)
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0]["field"] == field
    for path in ("backfill", "backfill/preview", "pause"):
        answer = client.post(f"/v1/schedules/{schedule_id}/{path}", json=body, headers=theirs)
        if path == "pause":
            answer = client.post(f"/v1/schedules/{schedule_id}/pause", headers=theirs)
        assert answer.status_code == 404, (path, answer.text)
    answer = client.post(f"/v1/schedules/{schedule_id}/backfill", json=body, headers=viewer)
    assert answer.status_code == 403
    assert writes() == before
    assert executions_of(schedule_id) == []
