"""Notification channels and deliveries through the REST API: the dashboard's rules
(admin-only writes, URLs never returned) with a real local HTTP receiver."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from core.vocabulary import Role
from db.audit import AuditFilters, list_audit
from db.session import session_scope
from testkit.api import bearer, make_token, writes
from testkit.factories import ADMIN
from testkit.receivers import Receiver

PROBLEM = "application/problem+json"
PASSWORD = "pw-Vb27apihook"
PATH_SECRET = "tok-Qe58apipath"


def test_an_admin_adds_tests_lists_and_deletes_a_channel_and_never_reads_its_url(
    client: TestClient, receiver: Receiver
) -> None:
    admin = bearer(make_token(name="ops"))
    url = f"json://hook:{PASSWORD}@127.0.0.1:{receiver.port}/hooks/{PATH_SECRET}"
    # when an admin adds a channel to a local HTTP receiver
    made = client.post("/v1/channels", json={"name": "on-call", "url": url}, headers=admin)
    # then it is made, and its answer holds the redacted URL only
    assert made.status_code == 201, made.text
    channel = made.json()
    assert channel["name"] == "on-call" and channel["created_by"] == "API token ops"
    assert PASSWORD not in made.text and PATH_SECRET not in made.text
    listed = client.get("/v1/channels", headers=admin)
    assert [c["id"] for c in listed.json()] == [channel["id"]]
    assert PASSWORD not in listed.text and PATH_SECRET not in listed.text
    # when they send a test, then the receiver gets it and the delivery is recorded
    tested = client.post(f"/v1/channels/{channel['id']}/test", headers=admin)
    assert tested.status_code == 200 and tested.json() == {"ok": True, "error": None}
    assert receiver.posts[0][2]["title"] == "Stepwise: test notification"
    (delivery,) = client.get("/v1/deliveries", headers=admin).json()
    assert (delivery["channel_name"], delivery["kind"], delivery["status"]) == (
        "on-call",
        "test",
        "ok",
    )
    # when they delete it, then it is gone; a second delete finds nothing
    assert client.delete(f"/v1/channels/{channel['id']}", headers=admin).status_code == 204
    assert client.get("/v1/channels", headers=admin).json() == []
    again = client.delete(f"/v1/channels/{channel['id']}", headers=admin)
    assert again.status_code == 404 and again.headers["content-type"] == PROBLEM
    # and each write was audited by the token's name, without the URL
    with session_scope() as session:
        audit = list_audit(session, AuditFilters(), actor=ADMIN)
    assert [r.action for r in audit[:3]] == ["delete_channel", "test_channel", "add_channel"]
    assert all(r.actor == "API token ops" for r in audit[:3])
    assert PASSWORD not in repr(audit) and PATH_SECRET not in repr(audit)


def test_a_bad_channel_gets_field_messages_without_its_url_and_writes_nothing(
    client: TestClient,
) -> None:
    admin = bearer(make_token(name="ops"))
    before = writes()
    secret_url = f"ftp://user:{PASSWORD}@example.com/"
    refused = client.post("/v1/channels", json={"name": " ", "url": secret_url}, headers=admin)
    assert refused.status_code == 422 and refused.headers["content-type"] == PROBLEM
    assert {e["field"] for e in refused.json()["errors"]} == {"name", "url"}
    assert PASSWORD not in refused.text
    missing = client.post("/v1/channels", json={"name": "x"}, headers=admin)
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "url"
    assert client.get("/v1/deliveries", params={"limit": 0}, headers=admin).status_code == 422
    assert writes() == before


@pytest.mark.parametrize("role", [Role.EDITOR, Role.VIEWER])
def test_only_admins_change_or_test_channels_and_others_still_read(
    client: TestClient, receiver: Receiver, role: Role
) -> None:
    admin = bearer(make_token(name="ops"))
    url = f"json://hook:{PASSWORD}@127.0.0.1:{receiver.port}/hooks/{PATH_SECRET}"
    channel_id = client.post("/v1/channels", json={"name": "c", "url": url}, headers=admin).json()[
        "id"
    ]
    other = bearer(make_token(role=role, name="member"))
    before = writes()
    for method, path, body in (
        ("post", "/v1/channels", {"name": "mine", "url": url}),
        ("delete", f"/v1/channels/{channel_id}", None),
        ("post", f"/v1/channels/{channel_id}/test", None),
    ):
        answer = client.request(method, path, json=body, headers=other)
        assert answer.status_code == 403, (method, path, answer.text)
        assert answer.headers["content-type"] == PROBLEM
    assert writes() == before and receiver.posts == []
    assert [c["id"] for c in client.get("/v1/channels", headers=other).json()] == [channel_id]
    assert client.get("/v1/deliveries", headers=other).json() == []


def test_a_refusal_reads_as_sentences_naming_the_fields_label_and_keeps_the_field_name(
    client: TestClient, admin: dict[str, str]
) -> None:
    allow = "(internal addresses are refused unless an administrator allows them with "
    allow += "STEPWISE_AGENT_ALLOW)."
    before = writes()
    # when a channel to an internal address is added
    channel = client.post(
        "/v1/channels", json={"name": "ops", "url": "json://10.0.0.5/hook"}, headers=admin
    )
    # then `detail` is a sentence naming the field as the form labels it
    assert channel.status_code == 422
    assert channel.json()["detail"] == (
        f"Apprise URL is not allowed: 10.0.0.5 is an internal address {allow}"
    )
    # and each error keeps the field's name for programs, beside its label
    [error] = channel.json()["errors"]
    assert (error["field"], error["label"]) == ("url", "Apprise URL")
    # when an automation calls an internal name and has no steps, then two sentences
    automation = client.post(
        "/v1/automations",
        json={"name": "x", "agent_url": "http://localhost:5432/", "steps": []},
        headers=admin,
    )
    assert automation.json()["detail"] == (
        f"Agent URL is not allowed: the host name localhost is internal {allow} "
        "Steps: add at least one step."
    ), automation.json()
    assert [e["field"] for e in automation.json()["errors"]] == ["agent_url", "steps"]
    assert writes() == before
