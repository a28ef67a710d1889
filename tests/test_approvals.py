"""Approval steps decided through the real `api` process: by an allowed role only, audited with
who and when, once; and the open waits listed for the caller's workspace only.

The waiting runs are stored as the engine stores them (`testkit.waits.parked_run`); times
are set in the database (no sleeping).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from core.vocabulary import ExecutionStatus, Role, StepStatus
from db.models import StepRun
from db.session import session_scope
from testkit.api import bearer, make_token, writes
from testkit.factories import ADMIN, execution, fetch, make_workspace, now
from testkit.waits import parked_run, wake_ups

pytestmark = pytest.mark.slow  # the real `api` process
PROBLEM = "application/problem+json"


def _token(role: Role, name: str) -> dict[str, str]:
    return bearer(make_token(role=role, name=name))


def _decide(
    api_http: httpx.Client,
    execution_id: uuid.UUID,
    step: str,
    verb: str,
    headers: dict[str, str],
    comment: str | None = None,
) -> httpx.Response:
    body = None if comment is None else {"comment": comment}
    return api_http.post(
        f"/v1/executions/{execution_id}/steps/{step}/{verb}", json=body, headers=headers
    )


def _problem(answer: httpx.Response, status: int, says: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    assert says in answer.json()["detail"], answer.json()


def test_an_editor_approves_audited_with_who_and_when(
    api_http: httpx.Client, redis_client: Any
) -> None:
    # given a run parked on an approval an editor may decide
    execution_id, steps = parked_run()
    editor = _token(Role.EDITOR, "release-bot")
    started = now()
    # when an editor approves it with a comment
    answer = _decide(api_http, execution_id, "ok", "approve", editor, "figures checked")
    # then the step succeeded with the decision as its output, and the run is woken
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == str(execution_id)
    row = fetch(StepRun, steps["ok"])
    assert row.status == StepStatus.SUCCEEDED
    who = "API token release-bot"
    assert json.loads(row.response_body or "") == {
        "approved": True,
        "by": who,
        "comment": "figures checked",
    }
    assert row.wait is not None
    decided = row.wait["decided"]
    assert (decided["by"], decided["approved"]) == (who, True)
    assert decided["comment"] == "figures checked"
    assert started <= datetime.fromisoformat(decided["at"]) <= now()
    assert execution(execution_id).available_at <= now()
    assert wake_ups(redis_client, execution_id) == 1
    # and the audit log says who approved which step of which run, and when
    admin = _token(Role.ADMIN, "auditor")
    [entry] = api_http.get("/v1/audit", params={"action": "approve"}, headers=admin).json()
    assert (entry["actor"], entry["target_type"], entry["target_id"]) == (
        who,
        "execution",
        str(execution_id),
    )
    assert entry["details"] == {"step": "ok", "comment": "figures checked"}
    assert started <= datetime.fromisoformat(entry["at"]) <= now()
    # and a second decision, either way, is refused and changes nothing
    before = writes()
    _problem(_decide(api_http, execution_id, "ok", "approve", editor), 409, "already answered by")
    _problem(_decide(api_http, execution_id, "ok", "reject", admin, "no"), 409, "already answered")
    assert writes() == before and wake_ups(redis_client, execution_id) == 1


def test_a_viewer_may_not_decide(api_http: httpx.Client, redis_client: Any) -> None:
    execution_id, steps = parked_run()
    viewer = _token(Role.VIEWER, "reader")
    before = writes()
    for verb in ("approve", "reject"):
        _problem(
            _decide(api_http, execution_id, "ok", verb, viewer), 403, "a viewer may not decide"
        )
    assert writes() == before and wake_ups(redis_client, execution_id) == 0
    assert fetch(StepRun, steps["ok"]).status == StepStatus.WAITING


def test_a_step_for_admins_refuses_an_editor_and_a_rejection_skips_it(
    api_http: httpx.Client, redis_client: Any
) -> None:
    # given a step only an admin may decide, whose rejection skips it
    execution_id, steps = parked_run()
    editor, admin = _token(Role.EDITOR, "editor"), _token(Role.ADMIN, "boss")
    before = writes()
    # when an editor tries, either way
    for verb in ("approve", "reject"):
        answer = _decide(api_http, execution_id, "boss", verb, editor)
        # then they are refused, saying who may
        _problem(answer, 403, "needs approval by an admin: an editor may not decide it")
    assert writes() == before
    # when an admin rejects it
    answer = _decide(api_http, execution_id, "boss", "reject", admin, "  over budget ")
    # then the step is skipped (its on_reject), with who and why, audited as a rejection
    assert answer.status_code == 200, answer.text
    row = fetch(StepRun, steps["boss"])
    assert row.status == StepStatus.SKIPPED
    assert row.error == "rejected by API token boss: over budget"
    [entry] = api_http.get("/v1/audit", params={"action": "reject"}, headers=admin).json()
    assert entry["actor"] == "API token boss" and entry["details"]["comment"] == "over budget"
    assert wake_ups(redis_client, execution_id) == 1


def test_a_rejection_fails_the_step_by_default(api_http: httpx.Client) -> None:
    execution_id, steps = parked_run()
    answer = _decide(api_http, execution_id, "ok", "reject", _token(Role.EDITOR, "e"))
    assert answer.status_code == 200, answer.text
    row = fetch(StepRun, steps["ok"])
    assert (row.status, row.error) == (StepStatus.FAILED, "rejected by API token e")
    assert row.wait is not None and row.wait["decided"]["approved"] is False


def test_refusals_name_the_reason_and_write_nothing(api_http: httpx.Client) -> None:
    execution_id, _ = parked_run()
    theirs, _ = parked_run(actor=make_workspace())
    editor = _token(Role.EDITOR, "e")
    before = writes()
    # a step that is no approval, one that does not exist, a run that does not exist
    _problem(_decide(api_http, execution_id, "fetch", "approve", editor), 404, "no approval step")
    _problem(_decide(api_http, execution_id, "nope", "approve", editor), 404, "no approval step")
    _problem(_decide(api_http, uuid.uuid4(), "ok", "approve", editor), 404, "does not exist")
    # another workspace's run reads as not existing
    _problem(_decide(api_http, theirs, "ok", "approve", editor), 404, "does not exist")
    # a comment too long, a field unknown
    long = "x" * 2001
    answer = _decide(api_http, execution_id, "ok", "approve", editor, long)
    assert answer.status_code == 422 and answer.headers["content-type"] == PROBLEM
    bad = api_http.post(
        f"/v1/executions/{execution_id}/steps/ok/approve",
        json={"comment": "ok", "approved": True},
        headers=editor,
    )
    assert bad.status_code == 422, bad.text
    # no token at all
    _problem(api_http.post(f"/v1/executions/{execution_id}/steps/ok/approve"), 401, "API token")
    assert writes() == before


def test_a_decision_after_the_deadline_is_gone_and_one_for_an_ended_run_refused(
    api_http: httpx.Client,
) -> None:
    execution_id, steps = parked_run()
    editor = _token(Role.EDITOR, "e")
    with session_scope() as session:
        session.execute(
            update(StepRun)
            .where(StepRun.id == steps["ok"])
            .values(wait_until=now() - timedelta(milliseconds=1))
        )
    before = writes()
    _problem(_decide(api_http, execution_id, "ok", "approve", editor), 410, "too late")
    assert writes() == before
    # a cancelled run's approval can no longer be decided
    cancelled = api_http.post(f"/v1/executions/{execution_id}/cancel", headers=editor)
    assert cancelled.json()["status"] == ExecutionStatus.CANCELLED
    admin = _token(Role.ADMIN, "a")
    _problem(_decide(api_http, execution_id, "boss", "approve", admin), 409, "cancelled")


def test_the_open_waits_are_listed_for_the_callers_workspace_only(api_http: httpx.Client) -> None:
    # given a parked run here, one in another workspace, and an ended run's waits
    ours, _ = parked_run()
    other = make_workspace()
    theirs, _ = parked_run(actor=other)
    ended, _ = parked_run(status=ExecutionStatus.CANCELLED)
    # when each workspace's token lists the waits
    mine = api_http.get("/v1/waits", headers=_token(Role.VIEWER, "v")).json()["items"]
    their_token = bearer(make_token(actor=other, name="theirs"))
    listed = api_http.get("/v1/waits", headers=their_token).json()["items"]
    # then each sees its own open waits only, on whom each waits, with its deadline
    assert {w["execution_id"] for w in mine} == {str(ours)}
    assert {w["execution_id"] for w in listed} == {str(theirs)}
    assert str(ended) not in {w["execution_id"] for w in mine}
    by_key = {w["step_key"]: w for w in mine}
    assert {k: w["waiting_on"] for k, w in by_key.items()} == {
        "fetch": "the agent",
        "ok": "approval by an editor",
        "boss": "approval by an admin",
    }
    assert by_key["ok"]["message"] == "Send the report?" and by_key["ok"]["role"] == "editor"
    assert by_key["fetch"]["automation_name"] == "Nightly report"
    assert by_key["fetch"]["until"] is not None and by_key["fetch"]["run_status"] == "waiting"
    # and without a token, nothing is listed
    assert api_http.get("/v1/waits").status_code == 401
    assert ADMIN.workspace_id != other.workspace_id
