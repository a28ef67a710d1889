"""The REST API: tokens, problem+json, the workspace isolation matrix, and the real process."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from core.access import Actor
from core.errors import Forbidden, ValidationFailed
from core.tokens import token_hash
from core.vocabulary import ExecutionStatus, Role
from db import queries
from db.session import session_scope
from db.tokens import list_tokens
from service import secrets as secret_service
from service import tokens, webhooks
from service.automations import rotate_signing_secret
from service.unit import read
from testkit.api import ApiProcess, bearer, make_token, writes
from testkit.factories import (
    ADMIN,
    CHANNEL_URL,
    add_executions,
    automation_input,
    make_automation,
    make_channel,
    make_schedule,
    make_workspace,
    person,
    table_snapshot,
)
from testkit.waiting import wait_for

PROBLEM = "application/problem+json"
ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
AUTOMATION = {
    "name": "Nightly report",
    "agent_url": "http://127.0.0.1:9/agent",
    "steps": [{"name": "one", "message": "do part one"}],
}
SCHEDULE = {"kind": "cron", "cron_expr": "*/5 * * * *", "timezone": "Europe/Berlin"}
# The last hour before the test session: a past range any schedule may backfill.
_HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
BACKFILL = {"from": (_HOUR - timedelta(hours=1)).isoformat(), "to": _HOUR.isoformat()}


# --- tokens ---------------------------------------------------------------------------


def test_a_token_is_shown_once_stored_as_a_hash_and_audited_by_name(db: None) -> None:
    # given an admin making a token
    made = tokens.create_token("deploy bot", Role.EDITOR, actor=ADMIN)
    # then the token is long and random, and only its hash is in the database
    assert made.token.startswith("stw_") and len(made.token) > 40
    with session_scope() as session:
        dump = session.execute(text("SELECT row_to_json(t)::text FROM api_tokens t")).scalars()
        rows = "\n".join(dump)
        audit = "\n".join(
            session.execute(text("SELECT row_to_json(a)::text FROM audit_log a")).scalars()
        )
    assert made.token not in rows and made.token[4:] not in rows
    assert token_hash(made.token) in rows
    assert made.token not in audit and "deploy bot" in audit and "create_token" in audit
    # and no list shows it again
    with session_scope() as session:
        listed = list_tokens(session, actor=ADMIN)
    assert [t.name for t in listed] == ["deploy bot"] and made.token not in repr(listed)


def test_only_admins_make_tokens_and_bad_input_is_refused(db: None) -> None:
    editor = person("ed@example.com", Role.EDITOR)
    from core.errors import Forbidden

    with pytest.raises(Forbidden):
        tokens.create_token("mine", Role.ADMIN, actor=editor)
    with pytest.raises(ValidationFailed) as refused:
        tokens.create_token(" ", "owner", actor=ADMIN)
    assert {e.field for e in refused.value.errors} == {"name", "role"}


def test_a_token_made_to_expire_gets_401_once_it_has(client: TestClient) -> None:
    # given a token made to last 7 days, and one made to last until revoked
    lasting = tokens.create_token("bot", Role.EDITOR, actor=ADMIN, expires_in_days=7).token
    forever = make_token(name="forever")
    with session_scope() as session:
        listed = {t.name: t for t in list_tokens(session, actor=ADMIN)}
    assert listed["forever"].expires_at is None
    expires = listed["bot"].expires_at
    assert expires is not None and expires - listed["bot"].created_at == timedelta(days=7)
    # then it acts until then
    assert client.get("/v1/automations", headers=bearer(lasting)).status_code == 200
    # when its time has come (the database's clock decides: moved back here)
    with session_scope() as session:
        session.execute(
            text(
                "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE name = 'bot'"
            )
        )
    # then it is refused, and the other still acts
    refused = client.get("/v1/automations", headers=bearer(lasting))
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    assert client.get("/v1/automations", headers=bearer(forever)).status_code == 200
    # and an actor made from it before it expired acts no more either
    held = Actor("API token bot", ADMIN.workspace_id, Role.EDITOR, token_id=listed["bot"].id)
    with pytest.raises(Forbidden):
        read(queries.list_automations, actor=held)
    # and a lifetime out of range is refused, writing nothing
    before = table_snapshot()
    for days in (0, -1, 3651):
        with pytest.raises(ValidationFailed) as bad:
            tokens.create_token("y", Role.VIEWER, actor=ADMIN, expires_in_days=days)
        assert [e.field for e in bad.value.errors] == ["expires_in_days"]
    assert table_snapshot() == before


def test_last_used_is_recorded_and_a_revoked_token_gets_401(
    client: TestClient,
) -> None:
    # given a token never used
    token = make_token()
    with session_scope() as session:
        (info,) = list_tokens(session, actor=ADMIN)
    assert info.last_used_at is None
    # when it is used, then its last use is recorded
    assert client.get("/v1/automations", headers=bearer(token)).status_code == 200
    with session_scope() as session:
        (info,) = list_tokens(session, actor=ADMIN)
    assert info.last_used_at is not None
    # and it moves when the token is used a minute or more later (not on every call)
    assert client.get("/v1/automations", headers=bearer(token)).status_code == 200
    with session_scope() as session:
        assert list_tokens(session, actor=ADMIN)[0].last_used_at == info.last_used_at
        session.execute(text("UPDATE api_tokens SET last_used_at = now() - interval '2 minutes'"))
    assert client.get("/v1/automations", headers=bearer(token)).status_code == 200
    with session_scope() as session:
        (info,) = list_tokens(session, actor=ADMIN)
        assert info.last_used_at is not None
        assert info.last_used_at > session.scalar(text("SELECT now() - interval '1 minute'"))
    # when an admin revokes it, then its next call is refused as unauthenticated
    tokens.revoke_token(info.id, actor=ADMIN)
    refused = client.get("/v1/automations", headers=bearer(token))
    assert refused.status_code == 401
    assert refused.headers["content-type"] == PROBLEM
    assert refused.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer "}, bearer("stw_not-a-token"), {"Authorization": "Basic eDp5"}],
)
def test_every_endpoint_but_health_readiness_and_docs_needs_a_token(
    client: TestClient, headers: dict[str, str]
) -> None:
    # given real objects for every path to name
    ids = {"queue": "default", "message_id": "m", "hook_id": str(uuid.uuid4()), "name": "X"}
    ids["step_key"] = "ok"
    ids["automation_id"] = str(make_automation())
    ids["schedule_id"] = str(make_schedule(uuid.UUID(ids["automation_id"])))
    ids["execution_id"] = str(add_executions(uuid.UUID(ids["automation_id"]), [{}])[0])
    ids["channel_id"] = str(make_channel())
    paths = client.get("/openapi.json").json()["paths"]
    before = writes()
    # when every operation is called without a live token, then each is refused as such
    for path, operations in paths.items():
        for method in operations:
            if path in NO_TOKEN or path in ("/health", "/ready"):
                continue
            answer = client.request(method, path.format(**ids), json={}, headers=headers)
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.headers["content-type"] == PROBLEM
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.json()["type"] == "urn:stepwise:problem:unauthenticated"
    assert writes() == before
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


# --- the API's own flow ---------------------------------------------------------------------


def test_create_an_automation_and_a_schedule_then_read_its_runs(
    client: TestClient, admin: dict[str, str]
) -> None:
    # when an automation and a schedule are created through the API
    created = client.post("/v1/automations", json=AUTOMATION, headers=admin)
    assert created.status_code == 201, created.text
    automation = created.json()
    assert automation["signing_secret"].startswith("whsec_")
    schedule = client.post(
        "/v1/schedules", json={**SCHEDULE, "automation_id": automation["id"]}, headers=admin
    )
    assert schedule.status_code == 201, schedule.text
    body = schedule.json()
    # then they read back as the dashboard shows them
    assert body["state"] == "active" and body["description"] and body["next_run_at"]
    assert client.get(f"/v1/schedules/{body['id']}", headers=admin).json()["id"] == body["id"]
    listed = client.get("/v1/automations", headers=admin).json()
    assert [a["name"] for a in listed] == ["Nightly report"] and "signing_secret" not in listed[0]
    # and an automation is made urgent through the API (its runs skip any backlog)
    assert listed[0]["urgent"] is False
    urgent = client.put(
        f"/v1/automations/{automation['id']}", json={**AUTOMATION, "urgent": True}, headers=admin
    )
    assert urgent.status_code == 200, urgent.text
    assert client.get(f"/v1/automations/{automation['id']}", headers=admin).json()["urgent"]
    # and pause, resume, update and trigger act on it
    paused = client.post(f"/v1/schedules/{body['id']}/pause", headers=admin).json()
    assert paused["state"] == "paused"
    assert client.post(f"/v1/schedules/{body['id']}/resume", headers=admin).json()["enabled"]
    edited = client.put(
        f"/v1/schedules/{body['id']}", json={"kind": "interval", "interval_s": 60}, headers=admin
    )
    assert edited.status_code == 200 and edited.json()["kind"] == "interval"
    run = client.post(f"/v1/schedules/{body['id']}/trigger", headers=admin)
    assert run.status_code == 202
    execution_id = run.json()["execution_id"]
    detail = client.get(f"/v1/executions/{execution_id}", headers=admin).json()
    assert detail["status"] == "queued" and detail["steps"] == []
    # the schedule's run, started by hand: listed under the schedule
    assert (detail["schedule_id"], detail["trigger"]) == (body["id"], "manual")
    of_schedule = client.get("/v1/executions", params={"schedule_id": body["id"]}, headers=admin)
    assert [e["id"] for e in of_schedule.json()["items"]] == [execution_id]
    cancelled = client.post(f"/v1/executions/{execution_id}/cancel", headers=admin).json()
    assert cancelled["status"] == "cancelled"
    assert client.post(f"/v1/executions/{execution_id}/retry", headers=admin).status_code == 202
    # and the audit names the token
    audit = client.get("/v1/audit", headers=admin).json()
    assert {row["actor"] for row in audit if row["target_type"] != "token"} == {"API token ci"}
    assert {"create", "pause", "resume", "edit", "run_now", "cancel", "retry"} <= {
        row["action"] for row in audit
    }
    # and deleting and archiving cancel what is open
    assert client.delete(f"/v1/schedules/{body['id']}", headers=admin).json()["deleted"]
    assert client.delete(f"/v1/automations/{automation['id']}", headers=admin).status_code == 200
    assert client.get(f"/v1/automations/{automation['id']}", headers=admin).status_code == 404


def test_a_timing_is_validated_and_previewed_without_saving(
    client: TestClient, admin: dict[str, str]
) -> None:
    before = writes()
    answer = client.post(
        "/v1/schedules/preview",
        json={
            "kind": "cron",
            "cron_expr": "0 9 * * 1-5",
            "timezone": "America/New_York",
            "count": 3,
        },
        headers=admin,
    )
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["next_runs"]) == 3 and "09:00" in answer.json()["description"]
    bad = client.post("/v1/schedules/preview", json={"kind": "cron", "cron_expr": "0 25 * * *"})
    assert bad.status_code == 401
    bad = client.post(
        "/v1/schedules/preview",
        json={"kind": "cron", "cron_expr": "0 25 * * *", "timezone": "Mars/Base"},
        headers=admin,
    )
    assert bad.status_code == 422 and bad.headers["content-type"] == PROBLEM
    assert {e["field"] for e in bad.json()["errors"]} == {"cron_expr", "timezone"}
    assert writes() == before


def test_bad_input_gets_the_dashboards_field_messages_and_writes_nothing(
    client: TestClient, admin: dict[str, str]
) -> None:
    # given what the dashboard's validation says of a bad automation
    data = {**AUTOMATION, "agent_url": "ftp://example.com", "steps": []}
    with pytest.raises(ValidationFailed) as core:
        from core.automation import validate_automation
        from core.settings import get_settings

        validate_automation(
            automation_input(agent_url="ftp://example.com", steps=()),
            egress=get_settings().egress_policy(),
        )
    before = writes()
    # when the same input is sent to the API
    for method, path, body in (
        ("post", "/v1/automations", data),
        ("post", "/v1/automations", {**AUTOMATION, "name": "bad\x00name"}),
        ("post", "/v1/automations", {"name": 3}),
        ("post", "/v1/schedules", {**SCHEDULE, "automation_id": str(uuid.uuid4())}),
        ("post", "/v1/schedules", {"kind": "interval", "interval_s": 5, "automation_id": "x"}),
        ("get", "/v1/executions?status=lost", None),
        ("get", "/v1/executions?cursor=bm90LWEtY3Vyc29y", None),
    ):
        answer = client.request(method, path, json=body, headers=admin)
        # then it is a problem+json with field errors, and nothing is written
        assert answer.status_code in (404, 422), (path, answer.text)
        assert answer.headers["content-type"] == PROBLEM
        assert {"type", "title", "status", "detail"} <= set(answer.json())
    answer = client.post("/v1/automations", json=data, headers=admin)
    assert answer.json()["errors"] == [
        {"field": e.field, "label": e.label, "message": e.message} for e in core.value.errors
    ]
    assert writes() == before


def test_executions_are_filtered_and_paged_with_a_cursor(
    client: TestClient, admin: dict[str, str]
) -> None:
    # given 7 runs, 5 failed
    automation_id = make_automation()
    statuses = [ExecutionStatus.FAILED] * 5 + [ExecutionStatus.SUCCEEDED] * 2
    ids = add_executions(automation_id, [{"status": s} for s in statuses])
    # when the failed ones are read two at a time
    seen, cursor, pages = [], None, 0
    while True:
        query = {"status": "failed", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/executions", params=query, headers=admin).json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # then every failed run comes once, newest first, and nothing else
    assert seen == [str(i) for i in ids[:5]] and pages == 3
    by_automation = client.get(
        "/v1/executions", params={"automation_id": str(automation_id)}, headers=admin
    )
    assert len(by_automation.json()["items"]) == 7


def test_each_execution_filter_narrows_the_list(client: TestClient, admin: dict[str, str]) -> None:
    # given a scheduled run, a retried one and a manual one, an hour apart, and another
    # automation's run
    automation_id = make_automation()
    schedule_id = make_schedule(automation_id)
    hour = datetime(2026, 3, 2, 12, tzinfo=UTC)
    scheduled, retried, manual = add_executions(
        automation_id,
        [
            {"schedule_id": schedule_id, "trigger": "schedule", "queued_at": hour},
            {"trigger": "retry", "queued_at": hour + timedelta(hours=1)},
            {"queued_at": hour + timedelta(hours=2)},
        ],
    )
    add_executions(make_automation(name="Other"), [{"queued_at": hour}])

    def listed(**query: str) -> list[str]:
        answer = client.get("/v1/executions", params=query, headers=admin)
        assert answer.status_code == 200, answer.text
        return [item["id"] for item in answer.json()["items"]]

    # then each filter keeps only its runs, newest first
    assert listed(schedule_id=str(schedule_id)) == [str(scheduled)]
    assert listed(trigger="retry") == [str(retried)]
    assert listed(automation_id=str(automation_id), trigger="manual") == [str(manual)]
    # and since is inclusive, until exclusive, a time without an offset is UTC
    window = listed(since="2026-03-02T13:00:00", until="2026-03-02T15:00:00+01:00")
    assert window == [str(retried)]


# --- isolation -------------------------------------------------------------------------------

# Every operation that names an object of a workspace, by the path the schema gives it.
BY_ID = [
    ("get", "/v1/automations/{automation_id}", None),
    ("put", "/v1/automations/{automation_id}", AUTOMATION),
    ("delete", "/v1/automations/{automation_id}", None),
    ("post", "/v1/automations/{automation_id}/run", None),
    ("get", "/v1/automations/{automation_id}/hook", None),
    ("post", "/v1/automations/{automation_id}/hook", None),
    ("post", "/v1/automations/{automation_id}/hook/rotate", None),
    ("delete", "/v1/automations/{automation_id}/hook", None),
    ("get", "/v1/automations/{automation_id}/webhook", None),
    ("post", "/v1/automations/{automation_id}/webhook", None),
    ("post", "/v1/automations/{automation_id}/webhook/rotate", None),
    ("delete", "/v1/automations/{automation_id}/webhook", None),
    ("get", "/v1/schedules/{schedule_id}", None),
    ("put", "/v1/schedules/{schedule_id}", SCHEDULE),
    ("post", "/v1/schedules/{schedule_id}/pause", None),
    ("post", "/v1/schedules/{schedule_id}/pause", {"note": "theirs"}),
    ("post", "/v1/schedules/{schedule_id}/resume", None),
    ("post", "/v1/schedules/{schedule_id}/run", None),
    ("post", "/v1/schedules/{schedule_id}/trigger", None),
    ("post", "/v1/schedules/{schedule_id}/backfill", BACKFILL),
    ("post", "/v1/schedules/{schedule_id}/backfill/preview", BACKFILL),
    ("delete", "/v1/schedules/{schedule_id}", None),
    ("get", "/v1/executions/{execution_id}", None),
    ("post", "/v1/executions/{execution_id}/cancel", None),
    ("post", "/v1/executions/{execution_id}/retry", None),
    ("post", "/v1/executions/{execution_id}/steps/{step_key}/approve", {"comment": "theirs"}),
    ("post", "/v1/executions/{execution_id}/steps/{step_key}/reject", None),
    ("post", "/v1/queues/{queue}/dead-letters/{message_id}/retry", None),
    ("delete", "/v1/queues/{queue}/dead-letters/{message_id}", None),
    ("delete", "/v1/channels/{channel_id}", None),
    ("post", "/v1/channels/{channel_id}/test", None),
]
# Every other write: creates, and acts on a whole queue.
WRITES = [
    ("post", "/v1/automations", AUTOMATION),
    ("post", "/v1/schedules", {**SCHEDULE, "automation_id": "{automation_id}"}),
    ("post", "/v1/channels", {"name": "mine", "url": CHANNEL_URL}),
    ("delete", "/v1/queues/{queue}/dead-letters", None),
    ("put", "/v1/secrets/{name}/origins", {"origins": ["https://agent.example.com"]}),
]
# What a viewer may send with POST: nothing is saved by either.
VIEWER_MAY = {"/v1/schedules/preview", "/v1/schedules/{schedule_id}/backfill/preview"}
# Called by other systems with the webhook's secret, not a token (tests/test_webhooks.py).
# An async step's callback proves itself by its signed URL (tests/test_callbacks.py).
NO_TOKEN = {"/v1/hooks/{hook_id}", "/v1/webhooks/{webhook_id}", "/v1/callbacks/{token}"}


def _ours(redis_client: Any) -> dict[str, str]:
    """One of each object of our workspace that a path may name: an automation with its
    webhook, a schedule, a failed run in the dead letters, a channel, a secret."""
    from tasks.actors import run_execution

    automation_id = make_automation()
    schedule_id = make_schedule(automation_id)
    (run_id,) = add_executions(automation_id, [{"status": ExecutionStatus.FAILED}])
    webhooks.enable_webhook(automation_id, actor=ADMIN)
    secret_service.set_secret("OURS_TOKEN", "ours-Kq3value", actor=ADMIN)
    redis_client.zadd("dramatiq:default.XQ", {"ours": time.time() * 1000})
    redis_client.hset(
        "dramatiq:default.XQ.msgs", "ours", run_execution.message(str(run_id)).encode()
    )
    ids = {
        "automation_id": automation_id,
        "schedule_id": schedule_id,
        "execution_id": run_id,
        "channel_id": make_channel(),
        "queue": "default",
        "message_id": "ours",
        "name": "OURS_TOKEN",
        "step_key": "ok",
    }
    return {name: str(value) for name, value in ids.items()}


def _filled(body: Any, ids: dict[str, str]) -> Any:
    if isinstance(body, dict):
        return {k: v.format(**ids) if isinstance(v, str) else v for k, v in body.items()}
    return body


def test_the_isolation_tables_name_every_operation_of_the_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    operations = {(m, p) for p, ops in paths.items() for m in ops if p not in NO_TOKEN}
    by_id = {(m, p) for m, p, _ in BY_ID}
    writes = {(m, p) for m, p, _ in BY_ID + WRITES if m != "get" and p not in VIEWER_MAY}
    assert by_id == {(m, p) for m, p in operations if "_id}" in p}
    assert writes == {(m, p) for m, p in operations if m != "get" and p not in VIEWER_MAY}


def test_another_workspaces_token_reaches_nothing_of_ours(
    client: TestClient, redis_client: Any
) -> None:
    # given our objects, and an admin token of another workspace
    ids = _ours(redis_client)
    theirs = bearer(make_token(make_workspace()))
    before = writes()
    # when they read or change any of our objects by id (or make a schedule on ours),
    # then each one does not exist for them
    for method, path, body in [*BY_ID, WRITES[1], WRITES[-1]]:
        answer = client.request(method, path.format(**ids), json=_filled(body, ids), headers=theirs)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.headers["content-type"] == PROBLEM
    # and their lists hold nothing of ours
    assert client.get("/v1/automations", headers=theirs).json() == []
    assert client.get("/v1/schedules", headers=theirs).json() == []
    assert client.get("/v1/executions", headers=theirs).json()["items"] == []
    assert client.get("/v1/channels", headers=theirs).json() == []
    assert client.get("/v1/deliveries", headers=theirs).json() == []
    assert client.get("/v1/queues/default/dead-letters", headers=theirs).json() == []
    audit = client.get("/v1/audit", headers=theirs).json()
    assert all(row["target_id"] not in ids.values() for row in audit)
    assert writes() == before
    # and emptying the dead letters empties only theirs
    purged = client.delete("/v1/queues/default/dead-letters", headers=theirs)
    assert purged.json() == {"count": 0}
    assert redis_client.zrange("dramatiq:default.XQ", 0, -1) == [b"ours"]


def test_a_viewer_tokens_writes_are_forbidden_and_write_nothing(
    client: TestClient, redis_client: Any
) -> None:
    # given our objects and a viewer's token
    ids = _ours(redis_client)
    viewer = bearer(make_token(role=Role.VIEWER, name="dashboards"))
    before = writes()
    # when it tries any write, then its role does not allow it, and nothing is written
    for method, path, body in BY_ID + WRITES:
        if method == "get" or path in VIEWER_MAY:
            continue
        answer = client.request(method, path.format(**ids), json=_filled(body, ids), headers=viewer)
        assert answer.status_code == 403, (method, path, answer.text)
        assert answer.headers["content-type"] == PROBLEM
    assert writes() == before
    assert redis_client.zrange("dramatiq:default.XQ", 0, -1) == [b"ours"]
    # while it reads everything of its workspace
    for method, path, _ in BY_ID:
        if method == "get":
            answer = client.get(path.format(**ids), headers=viewer)
            assert answer.status_code == 200, (path, answer.text)
    assert [c["id"] for c in client.get("/v1/channels", headers=viewer).json()] == [
        ids["channel_id"]
    ]


# --- the real process ----------------------------------------------------------------------


def _readme_example() -> tuple[str, dict[str, Any], str]:
    """The README's API example: where it creates a schedule, with what, and where it
    reads the schedule's runs."""
    section = README.read_text().split("## REST API", 1)[1]
    lines = section.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert len(lines) == 3 and lines[0].startswith('H="Authorization: Bearer $'), lines
    created = re.fullmatch(r"curl -s -H \"\$H\" -H '[^']+' -d '(\{.*\})' \$API(/\S+)", lines[1])
    read = re.fullmatch(r'curl -s -H "\$H" "\$API(/[^"]+)"', lines[2])
    assert created and read, lines
    return created[2], json.loads(created[1]), read[1]


@pytest.mark.slow
def test_the_procfile_api_process_serves_the_api_on_loopback(
    db: None, redis_client: Any, api_process: ApiProcess
) -> None:
    # given the Procfile's `api`, started as production starts it
    token = make_token()
    # when a client does as the README shows: create a schedule, then read its runs
    create, body, read = _readme_example()
    with httpx.Client(base_url=api_process.url, headers=bearer(token), timeout=10) as http:
        automation = http.post("/v1/automations", json=AUTOMATION).json()
        body = {**body, "automation_id": automation["id"]}
        schedule = http.post(create, json=body)
        assert schedule.status_code == 201, schedule.text
        runs = http.get(read.replace("<schedule id>", schedule.json()["id"]))
        assert runs.status_code == 200 and runs.json() == {"items": [], "next_cursor": None}
        assert http.get("/openapi.json").json()["info"]["title"] == "Stepwise"
        # and a query string, which may carry what no log should keep
        looked = http.get("/v1/executions", params={"status": "failed", "cursor": "x-query-9"})
        assert looked.status_code == 422
    # then it listened on loopback only, and its log never held the token
    assert f"Uvicorn running on {api_process.url}" in api_process.log()
    assert token not in api_process.log()
    # and its access log names paths, never their query strings
    wait_for(
        lambda: any(
            "GET /v1/executions HTTP/1.1" in line and "422" in line
            for line in api_process.log().splitlines()
        ),
        timeout=10,
    )
    assert "x-query-9" not in api_process.log() and "status=failed" not in api_process.log()


# --- the Workspace page ------------------------------------------------------------------------


def test_an_admin_makes_a_token_on_the_workspace_page_sees_it_once_and_revokes_it(
    client: TestClient,
) -> None:
    from testkit.pages import load_view

    # given the local admin on the Workspace page
    at = load_view("workspace")
    at.run()
    # when they make an editor token that expires after 30 days
    at.text_input(key="ws_token_name").input("deploy script").run()
    at.selectbox(key="ws_token_role").set_value("editor").run()
    at.selectbox(key="ws_token_days").set_value(30).run()
    at.button(key="ws_token_make").click().run()
    assert not at.exception, at.exception
    # then it is shown once, and it works on the API as an editor of this workspace
    (shown,) = [c.value for c in at.code]
    assert shown.startswith("stw_")
    assert client.get("/v1/automations", headers=bearer(shown)).status_code == 200
    at.run()
    assert not at.code and shown not in repr(at)
    # when they revoke it, then the API refuses it, and both actions are audited
    at.button(key="ws_token_revoke").click().run()
    assert not at.exception, at.exception
    assert client.get("/v1/automations", headers=bearer(shown)).status_code == 401
    with session_scope() as session:
        (made,) = list_tokens(session, actor=person("local admin"))
    assert made.role == Role.EDITOR and made.revoked_at is not None
    assert made.expires_at is not None and made.expires_at - made.created_at == timedelta(days=30)
    from db.audit import AuditFilters, list_audit

    with session_scope() as session:
        audit = list_audit(session, AuditFilters(), actor=person("local admin"))
    assert [r.action for r in audit[:2]] == ["revoke_token", "create_token"]
    assert all(shown not in repr(r.details) for r in audit)


def test_automations_come_a_page_at_a_time_and_old_clients_still_get_a_list(
    client: TestClient, admin: dict[str, str]
) -> None:
    # given five automations, two of them with the same name
    for name in ("delta", "alpha", "charlie", "bravo", "alpha"):
        make_automation(name=name)
    # when a client reads them two at a time, following the cursor
    seen: list[str] = []
    pages = 0
    url: str | None = "/v1/automations?limit=2"
    while url:
        page = client.get(url, headers=admin)
        assert page.status_code == 200 and len(page.json()) <= 2
        seen += [a["name"] for a in page.json()]
        pages += 1
        cursor = page.headers.get("stepwise-next-cursor")
        if cursor:
            assert (
                f"cursor={cursor}" in page.headers["link"] and 'rel="next"' in page.headers["link"]
            )
        url = None if cursor is None else f"/v1/automations?limit=2&cursor={cursor}"
    # then it gets each once, in order, in three pages, the last without a cursor
    assert seen == ["alpha", "alpha", "bravo", "charlie", "delta"] and pages == 3
    # and a client written before pages gets the same list from one call (within the default)
    assert [a["name"] for a in client.get("/v1/automations", headers=admin).json()] == seen
    # and a page size past the limit, or a cursor not ours, is refused
    assert client.get("/v1/automations?limit=201", headers=admin).status_code == 422
    forged = client.get("/v1/automations?cursor=bm9wZQ", headers=admin)
    assert forged.status_code == 422 and forged.json()["errors"][0]["field"] == "cursor"


def test_an_idempotency_key_makes_a_repeated_create_make_one_object(
    client: TestClient, admin: dict[str, str]
) -> None:
    # given a create sent with a key
    keyed = {**admin, "Idempotency-Key": "nightly-1"}
    first = client.post("/v1/automations", json=AUTOMATION, headers=keyed)
    assert first.status_code == 201
    # when it is sent again (a retry after a lost answer)
    again = client.post("/v1/automations", json=AUTOMATION, headers=keyed)
    # then the same automation answers, and there is one
    assert again.status_code == 201
    assert again.json() == {**first.json(), "signing_secret": None}
    assert len(client.get("/v1/automations", headers=admin).json()) == 1
    # and the signing secret was in the first answer only: a repeat never shows it,
    # neither the first nor one made since (a rotation)
    assert first.json()["signing_secret"].startswith("whsec_")
    rotated = rotate_signing_secret(uuid.UUID(first.json()["id"]), actor=ADMIN)
    later = client.post("/v1/automations", json=AUTOMATION, headers=keyed)
    assert later.json()["signing_secret"] is None and rotated not in later.text
    # and the same key with another body is refused, writing nothing
    before = writes()
    other = client.post("/v1/automations", json={**AUTOMATION, "name": "Other"}, headers=keyed)
    assert other.status_code == 422 and other.json()["errors"][0]["field"] == "Idempotency-Key"
    assert writes() == before
    # and schedules behave the same; a refused create leaves its key free
    schedule = {**SCHEDULE, "automation_id": first.json()["id"]}
    bad = client.post(
        "/v1/schedules",
        json={**schedule, "timezone": "Mars/Base"},
        headers={**admin, "Idempotency-Key": "s"},
    )
    assert bad.status_code == 422
    made = [
        client.post("/v1/schedules", json=schedule, headers={**admin, "Idempotency-Key": "s2"})
        for _ in range(2)
    ]
    assert made[0].json()["id"] == made[1].json()["id"]
    assert len(client.get("/v1/schedules", headers=admin).json()) == 1


def test_an_idempotency_key_makes_a_repeated_run_or_trigger_start_one_run(
    client: TestClient, admin: dict[str, str], redis_client: Any
) -> None:
    # given an automation with a schedule
    automation = client.post("/v1/automations", json=AUTOMATION, headers=admin).json()["id"]
    schedule = client.post(
        "/v1/schedules", json={**SCHEDULE, "automation_id": automation}, headers=admin
    ).json()["id"]
    for path, key in (
        (f"/v1/automations/{automation}/run", "run-1"),
        (f"/v1/schedules/{schedule}/trigger", "trigger-1"),
    ):
        keyed = {**admin, "Idempotency-Key": key}
        body = {"input": {"order": 42}}
        # when a run is started with a key, then sent again (a retry after a lost answer)
        first = client.post(path, json=body, headers=keyed)
        again = client.post(path, json=body, headers=keyed)
        # then both answer with the same run
        assert first.status_code == again.status_code == 202, first.text
        assert again.json() == first.json()
        # and the same key with another input is refused, writing nothing
        before = writes()
        other = client.post(path, json={"input": {"order": 43}}, headers=keyed)
        assert other.status_code == 422, other.text
        assert other.json()["errors"][0]["field"] == "Idempotency-Key"
        assert writes() == before
    # then two runs were made in all, each with its input, and without a key each call runs
    runs = client.get(f"/v1/executions?automation_id={automation}", headers=admin).json()
    assert len(runs["items"]) == 2
    for _ in range(2):
        client.post(f"/v1/automations/{automation}/run", headers=admin)
    runs = client.get(f"/v1/executions?automation_id={automation}", headers=admin).json()
    assert len(runs["items"]) == 4


def test_an_idempotency_key_belongs_to_the_token_that_sent_it(
    client: TestClient, admin: dict[str, str]
) -> None:
    # given a create sent with a key
    first = client.post(
        "/v1/automations", json=AUTOMATION, headers={**admin, "Idempotency-Key": "nightly-1"}
    )
    assert first.status_code == 201, first.text
    # when another workspace's token, then another token of ours, send the same key and body
    for headers in (bearer(make_token(make_workspace())), bearer(make_token(name="other"))):
        again = client.post(
            "/v1/automations", json=AUTOMATION, headers={**headers, "Idempotency-Key": "nightly-1"}
        )
        # then each makes its own automation, and learns nothing of the first
        assert again.status_code == 201, again.text
        assert again.json()["id"] != first.json()["id"]
        assert again.json()["signing_secret"] != first.json()["signing_secret"]
    ours = client.get("/v1/automations", headers=admin).json()
    assert len(ours) == 2 and first.json()["id"] in {a["id"] for a in ours}


def test_queues_list_the_live_worker_processes_without_run_ids(
    client: TestClient, admin: dict[str, str], worker: Any
) -> None:
    import os
    import socket

    from tasks.actors import broker
    from tasks.workers import WorkerBeacon

    # given a worker process that reported (its beacon is written every few seconds)
    beacon = next(m for m in broker.middleware if isinstance(m, WorkerBeacon))
    beacon.publish()
    # when a viewer reads the queues
    viewer = bearer(make_token(role=Role.VIEWER, name="viewer"))
    answer = client.get("/v1/queues", headers=viewer)
    # then the worker is listed by host and pid with its queues and counts, and no run ids
    assert answer.status_code == 200, answer.text
    (me,) = answer.json()["workers"]
    assert me["name"] == f"{socket.gethostname()}:{os.getpid()}"
    assert me["queues"] == ["default", "urgent"] and me["running"] == 0
    assert set(me) == {
        "name",
        "queues",
        "running",
        "processed",
        "failed",
        "started",
        "last_heartbeat",
    }


def test_queues_and_dead_letters_are_scoped_admin_only_and_audited(
    client: TestClient, admin: dict[str, str], redis_client: Any
) -> None:
    import time

    from tasks.actors import run_execution

    # given a dead letter of our failed run and one of another workspace's
    ours = make_automation()
    (our_run,) = add_executions(ours, [{"status": ExecutionStatus.FAILED}])
    other = make_workspace()
    (their_run,) = add_executions(
        make_automation(actor=other), [{"status": ExecutionStatus.FAILED}]
    )
    for message_id, run in (("ours", our_run), ("theirs", their_run)):
        redis_client.zadd("dramatiq:default.XQ", {message_id: time.time() * 1000})
        redis_client.hset(
            "dramatiq:default.XQ.msgs", message_id, run_execution.message(str(run)).encode()
        )
    depths = client.get("/v1/queues", headers=admin).json()
    assert {q["queue"]: q["dead"] for q in depths["queues"]}["default"] == 2
    # then each workspace lists its own only, and acts on its own only
    letters = client.get("/v1/queues/default/dead-letters", headers=admin).json()
    assert [(m["message_id"], m["execution_id"]) for m in letters] == [("ours", str(our_run))]
    theirs = bearer(make_token(other))
    assert client.delete("/v1/queues/default/dead-letters/ours", headers=theirs).status_code == 404
    viewer = bearer(make_token(role=Role.VIEWER, name="viewer"))
    assert client.delete("/v1/queues/default/dead-letters/ours", headers=viewer).status_code == 403
    assert client.get("/v1/queues/nope/dead-letters", headers=admin).status_code == 422
    # when our admin retries ours, then our run is queued again, and theirs stays dead
    retried = client.post("/v1/queues/default/dead-letters/ours/retry", headers=admin)
    assert retried.status_code == 202
    assert client.get(f"/v1/executions/{our_run}", headers=admin).json()["status"] == "queued"
    assert redis_client.zrange("dramatiq:default.XQ", 0, -1) == [b"theirs"]
    assert client.delete("/v1/queues/default/dead-letters", headers=admin).json() == {"count": 0}
    audit = client.get("/v1/audit", params={"target_type": "execution"}, headers=admin).json()
    assert "retry_dead_letter" in {row["action"] for row in audit}


def test_a_run_lists_one_dead_letter_with_its_error_and_link_and_they_are_cleaned_in_bulk(
    client: TestClient, admin: dict[str, str], redis_client: Any
) -> None:
    from tasks.actors import run_execution

    # given two dead letters of a failed run (an older attempt's, left by an earlier
    # version, and its newest), and an old one of a run retried since that succeeded
    auto = make_automation()
    failed, succeeded = add_executions(
        auto,
        [
            {"status": ExecutionStatus.FAILED, "error": "step 2: agent answered 400"},
            {"status": ExecutionStatus.SUCCEEDED},
        ],
    )
    now_ms = time.time() * 1000
    for message_id, run, age_h in (
        ("older", failed, 3),
        ("newest", failed, 0),
        ("long-ago", succeeded, 48),
    ):
        redis_client.zadd("dramatiq:default.XQ", {message_id: now_ms - age_h * 3_600_000})
        redis_client.hset(
            "dramatiq:default.XQ.msgs", message_id, run_execution.message(str(run)).encode()
        )
    # when listed, then each run shows once, its newest, with its error, status and link
    letters = client.get("/v1/queues/default/dead-letters", headers=admin).json()
    shown = [
        (m["message_id"], m["error"], m["execution_status"], m["execution_url"]) for m in letters
    ]
    assert shown == [
        ("newest", "step 2: agent answered 400", "failed", f"/v1/executions/{failed}"),
        ("long-ago", None, "succeeded", f"/v1/executions/{succeeded}"),
    ]
    # when those of runs that succeeded since are cleaned, then only they go
    by_status = client.delete(
        "/v1/queues/default/dead-letters", params={"status": "succeeded"}, headers=admin
    )
    assert by_status.json() == {"count": 1}
    # when those over an hour old are cleaned, then the older attempt's goes, the newest stays
    by_age = client.delete(
        "/v1/queues/default/dead-letters", params={"older_than_hours": 1}, headers=admin
    )
    assert by_age.json() == {"count": 1}
    assert redis_client.zrange("dramatiq:default.XQ", 0, -1) == [b"newest"]
    # and the cleaning is audited with its criteria
    audit = client.get("/v1/audit", params={"action": "purge_dead_letters"}, headers=admin).json()
    assert [row["details"].get("statuses") for row in audit][-1] == ["succeeded"]


def test_admins_bind_a_secret_to_origins_and_members_read_them(client: TestClient) -> None:
    # given a secret, an admin token and an editor token
    secret_service.set_secret("AGENT_TOKEN", "tok-Rw83value", actor=ADMIN)
    admin, editor = bearer(make_token(name="ops")), bearer(make_token(role=Role.EDITOR))
    body = {"origins": ["https://agent.example.com/run", "http://127.0.0.1:8787"]}
    # when an admin binds it, then it is bound, audited, and listed without its value
    bound = client.put("/v1/secrets/AGENT_TOKEN/origins", json=body, headers=admin)
    assert bound.status_code == 200, bound.text
    origins = ["http://127.0.0.1:8787", "https://agent.example.com:443"]
    assert bound.json()["origins"] == origins
    listed = client.get("/v1/secrets", headers=editor)
    assert [(s["name"], s["origins"]) for s in listed.json()] == [("AGENT_TOKEN", origins)]
    assert "tok-Rw83value" not in listed.text + bound.text
    # and an editor may not, a bad origin or an unknown secret writes nothing
    before = writes()
    assert (
        client.put("/v1/secrets/AGENT_TOKEN/origins", json=body, headers=editor).status_code == 403
    )
    bad = client.put(
        "/v1/secrets/AGENT_TOKEN/origins", json={"origins": ["ftp://x"]}, headers=admin
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "origins"
    gone = client.put("/v1/secrets/NOPE/origins", json=body, headers=admin)
    assert gone.status_code == 404
    assert writes() == before
