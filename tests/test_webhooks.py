"""Inbound webhooks: a signed (or secret-bearing) POST starts one run whose steps get the
payload, on a real PostgreSQL, Redis, dramatiq worker and local HTTP agent."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update

from core.limits import MAX_INPUT_BYTES, SIGNATURE_TOLERANCE_S
from core.secrets import signature_header
from core.vocabulary import Role
from db.keys import reseal_secrets
from db.models import Execution, Webhook, Workspace
from db.session import session_scope
from service import automations
from testkit.api import ApiProcess, bearer, make_token, writes
from testkit.factories import ADMIN, make_automation, make_workspace
from testkit.waiting import wait_for

PROBLEM = "application/problem+json"
PAYLOAD = {"event": "order.paid", "order": {"id": 42, "total": "19.90"}}


def enable(client: TestClient, admin: dict[str, str], automation_id: uuid.UUID) -> dict[str, Any]:
    made = client.post(f"/v1/automations/{automation_id}/hook", headers=admin)
    assert made.status_code == 201, made.text
    return dict(made.json())


def signed(secret: str, body: bytes, *, at: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if at is None else at
    return {
        "Stepwise-Signature": signature_header(secret, stamp, body),
        "Content-Type": "application/json",
    }


def post(client: TestClient, url: str, body: bytes, headers: dict[str, str]) -> Any:
    return client.post(url, content=body, headers=headers)


def _executions() -> list[Execution]:
    with session_scope() as session:
        rows = session.scalars(select(Execution)).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def test_a_signed_call_starts_one_run_whose_steps_get_the_payload(
    client: TestClient, admin: dict[str, str], worker: Any, agent: Any
) -> None:
    # given an automation of 2 steps with its webhook enabled
    automation_id = make_automation(agent_url=agent.url, steps=2)
    hook = enable(client, admin, automation_id)
    assert hook["url"].endswith(f"/v1/hooks/{hook['id']}")
    body = json.dumps(PAYLOAD).encode()
    # when a signed JSON payload is posted to its URL, with no API token
    answer = post(client, hook["url"], body, signed(hook["secret"], body))
    # then the answer is 202 with the run, which calls the agent with the payload as input
    assert answer.status_code == 202, answer.text
    execution_id = answer.json()["execution_id"]
    wait_for(lambda: len(agent.calls_for(execution_id)) == 2, message="both steps")
    assert [c.body["input"] for c in agent.calls_for(execution_id)] == [PAYLOAD, PAYLOAD]
    (run,) = _executions()
    assert str(run.id) == execution_id and run.trigger == "webhook" and run.input == PAYLOAD
    # and the run history and the audit log name the webhook
    history = client.get("/v1/executions?trigger=webhook", headers=admin).json()
    assert [r["id"] for r in history["items"]] == [execution_id]
    audit = client.get(f"/v1/audit?target_id={automation_id}", headers=admin).json()
    started = [a for a in audit if a["action"] == "run_now"]
    assert len(started) == 1
    assert started[0]["actor"] == f"webhook {hook['id']}"
    assert started[0]["details"]["trigger"] == "webhook"
    assert started[0]["details"]["execution_id"] == execution_id
    # and the trigger records its last use
    got = client.get(f"/v1/automations/{automation_id}/hook", headers=admin).json()
    assert got["last_used_at"] is not None and "secret" not in got


def test_the_secret_in_a_header_also_proves_the_call(
    client: TestClient, admin: dict[str, str]
) -> None:
    hook = enable(client, admin, make_automation())
    answer = post(client, hook["url"], b'{"a": 1}', {"Stepwise-Hook-Secret": hook["secret"]})
    assert answer.status_code == 202, answer.text
    assert [e.input for e in _executions()] == [{"a": 1}]


def test_a_bad_or_missing_signature_gets_401_and_writes_nothing(
    client: TestClient, admin: dict[str, str]
) -> None:
    # given an enabled webhook, and another automation's
    hook = enable(client, admin, make_automation())
    other = enable(client, admin, make_automation(name="other"))
    body = json.dumps(PAYLOAD).encode()
    secret = hook["secret"]
    now = int(time.time())
    valid_v1 = signed(secret, body)["Stepwise-Signature"].split(",")[1]
    refused = {
        "no proof": {},
        "another secret": signed("whsec_not-it", body),
        "another webhook's secret": {"Stepwise-Hook-Secret": other["secret"]},
        "signed with another webhook's secret": signed(other["secret"], body),
        "another body": signed(secret, b'{"event": "other"}'),
        "too old": signed(secret, body, at=now - SIGNATURE_TOLERANCE_S - 60),
        "from the future": signed(secret, body, at=now + SIGNATURE_TOLERANCE_S + 60),
        "no timestamp": {"Stepwise-Signature": valid_v1},
        "another timestamp": {"Stepwise-Signature": f"t={now - 1},{valid_v1}"},
        "garbage": {"Stepwise-Signature": "v1=abc,t=x"},
        "no v1": {"Stepwise-Signature": f"t={now}"},
        "empty header": {"Stepwise-Signature": ""},
        "wrong secret header": {"Stepwise-Hook-Secret": secret + "x"},
        "non-ascii signature": {"Stepwise-Signature": f"t={now},v1=é".encode()},
    }
    before = writes()
    for why, headers in refused.items():
        # when it is called without a valid proof
        answer = client.post(hook["url"], content=body, headers=headers)
        # then it is 401 problem+json
        assert answer.status_code == 401, why
        assert answer.headers["content-type"] == PROBLEM, why
        assert "Stepwise-Signature" in answer.json()["detail"]
        assert answer.headers["www-authenticate"].startswith("Stepwise-Signature")
    # and no execution, audit row or delivery was written, not even "last used"
    assert writes() == before


def test_the_same_delivery_id_twice_starts_one_run(
    client: TestClient, admin: dict[str, str], worker: Any, agent: Any
) -> None:
    # given an enabled webhook
    hook = enable(client, admin, make_automation(agent_url=agent.url, steps=1))
    body = json.dumps(PAYLOAD).encode()
    # when the sender delivers the same event twice (a retry on its side)
    first = post(
        client, hook["url"], body, {**signed(hook["secret"], body), "Stepwise-Delivery": "d-1"}
    )
    again = post(
        client, hook["url"], body, {**signed(hook["secret"], body), "Stepwise-Delivery": "d-1"}
    )
    # then both answers name the same run, and there is one run, called once
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert first.json() == again.json()
    execution_id = first.json()["execution_id"]
    wait_for(lambda: agent.calls_for(execution_id), message="the run")
    assert [str(e.id) for e in _executions()] == [execution_id]
    # and another delivery id, signed anew, is another run
    resigned = signed(hook["secret"], body, at=int(time.time()) + 1)
    other = post(client, hook["url"], body, {**resigned, "Stepwise-Delivery": "d-2"})
    assert other.json()["execution_id"] != execution_id
    assert len(_executions()) == 2
    time.sleep(0.5)
    assert len(agent.calls_for(execution_id)) == 1


def test_one_signature_starts_at_most_one_run_whatever_its_delivery_id(
    client: TestClient, admin: dict[str, str]
) -> None:
    # given a signed call that started a run
    hook = enable(client, admin, make_automation())
    body = json.dumps(PAYLOAD).encode()
    proof = signed(hook["secret"], body)
    first = post(client, hook["url"], body, {**proof, "Stepwise-Delivery": "d-1"})
    assert first.status_code == 202, first.text
    # when someone who saw it replays it within the tolerance, with new delivery ids or none
    replays = [
        post(client, hook["url"], body, {**proof, "Stepwise-Delivery": f"replay-{n}"})
        for n in range(3)
    ] + [post(client, hook["url"], body, proof)]
    # then each answers with the first run, and there is one run
    assert {r.json()["execution_id"] for r in replays} == {first.json()["execution_id"]}
    assert len(_executions()) == 1
    # and the first delivery id still answers with it too
    again = post(client, hook["url"], body, {**proof, "Stepwise-Delivery": "d-1"})
    assert again.json() == first.json() and len(_executions()) == 1


def test_bad_bodies_are_refused_and_write_nothing(
    client: TestClient, admin: dict[str, str]
) -> None:
    hook = enable(client, admin, make_automation())
    proof = {"Stepwise-Hook-Secret": hook["secret"]}
    before = writes()
    for body, status in [
        (b"not json", 400),
        (b"[1, 2]", 400),
        (b"", 400),
        (b'{"a": "\\u0000"}', 400),
        (json.dumps({"a": "x" * MAX_INPUT_BYTES}).encode(), 413),
    ]:
        answer = post(client, hook["url"], body, proof)
        assert answer.status_code == status, (body[:20], answer.text)
        assert answer.headers["content-type"] == PROBLEM
    long_id = post(client, hook["url"], b"{}", {**proof, "Stepwise-Delivery": "x" * 201})
    assert long_id.status_code in (400, 422)
    assert writes() == before


def test_disabled_deleted_or_unknown_webhooks_are_404(
    client: TestClient, admin: dict[str, str]
) -> None:
    # given two webhooks, one then disabled and one whose automation is deleted
    disabled_id, deleted_id = make_automation(), make_automation(name="other")
    disabled, deleted = enable(client, admin, disabled_id), enable(client, admin, deleted_id)
    assert client.delete(f"/v1/automations/{disabled_id}/hook", headers=admin).status_code == 200
    assert client.delete(f"/v1/automations/{deleted_id}", headers=admin).status_code == 200
    before = writes()
    # when called with their (formerly) right secrets, or at an unknown id
    for hook in (disabled, deleted, {"url": f"/v1/hooks/{uuid.uuid4()}", "secret": "x"}):
        answer = post(client, hook["url"], b"{}", {"Stepwise-Hook-Secret": hook["secret"]})
        # then 404, nothing written
        assert answer.status_code == 404, answer.text
        assert answer.headers["content-type"] == PROBLEM
    assert writes() == before
    assert client.get(f"/v1/automations/{disabled_id}/hook", headers=admin).status_code == 404


def test_the_secret_is_sealed_shown_once_and_rotation_stops_the_old_one(
    client: TestClient, admin: dict[str, str]
) -> None:
    automation_id = make_automation()
    hook = enable(client, admin, automation_id)
    # the secret is stored sealed, and no read shows it again
    with session_scope() as session:
        dump = "\n".join(
            session.execute(text("SELECT row_to_json(h)::text FROM hook_triggers h")).scalars()
        )
        audit = "\n".join(
            session.execute(text("SELECT row_to_json(a)::text FROM audit_log a")).scalars()
        )
    assert hook["secret"] not in dump and hook["secret"][6:] not in dump
    assert hook["secret"] not in audit and "enable_hook" in audit
    again = client.post(f"/v1/automations/{automation_id}/hook", headers=admin)
    assert again.status_code == 409  # already enabled: rotate instead
    # when rotated, the URL stays, the old secret is refused and the new one works
    rotated = client.post(f"/v1/automations/{automation_id}/hook/rotate", headers=admin).json()
    assert rotated["url"] == hook["url"] and rotated["secret"] != hook["secret"]
    old = post(client, hook["url"], b"{}", {"Stepwise-Hook-Secret": hook["secret"]})
    new = post(client, hook["url"], b"{}", {"Stepwise-Hook-Secret": rotated["secret"]})
    assert (old.status_code, new.status_code) == (401, 202)
    # and reseal (key rotation) keeps it working
    with session_scope() as session:
        assert reseal_secrets(session) >= 2
    assert (
        post(client, hook["url"], b"{}", {"Stepwise-Hook-Secret": rotated["secret"]}).status_code
        == 202
    )


def test_viewers_and_other_workspaces_cannot_manage_a_webhook(
    client: TestClient, admin: dict[str, str]
) -> None:
    automation_id = make_automation()
    hook = enable(client, admin, automation_id)
    viewer = bearer(make_token(ADMIN, Role.VIEWER))
    other = bearer(make_token(make_workspace()))
    before = writes()
    for headers, status in ((viewer, 403), (other, 404)):
        for method, path in (
            ("post", f"/v1/automations/{automation_id}/hook/rotate"),
            ("delete", f"/v1/automations/{automation_id}/hook"),
        ):
            assert client.request(method, path, headers=headers).status_code == status, path
    assert client.get(f"/v1/automations/{automation_id}/hook", headers=other).status_code == 404
    assert client.get(f"/v1/automations/{automation_id}/hook", headers=viewer).status_code == 200
    assert writes() == before
    assert (
        post(client, hook["url"], b"{}", {"Stepwise-Hook-Secret": hook["secret"]}).status_code
        == 202
    )


def test_a_webhook_respects_the_workspaces_run_quota(
    client: TestClient, admin: dict[str, str]
) -> None:
    hook = enable(client, admin, make_automation())
    with session_scope() as session:
        session.execute(update(Workspace).values(max_runs_per_minute=0))
    before = writes()
    answer = post(
        client,
        hook["url"],
        b"{}",
        {"Stepwise-Hook-Secret": hook["secret"], "Stepwise-Delivery": "q"},
    )
    assert answer.status_code == 409 and "quota" in answer.json()["detail"]
    assert writes() == before


def test_a_webhook_actor_may_only_start_runs(client: TestClient, admin: dict[str, str]) -> None:
    from core.access import Actor
    from core.errors import Forbidden

    automation_id = make_automation()
    hook = enable(client, admin, automation_id)
    with session_scope() as session:
        webhook_id = session.scalar(select(Webhook.id))
    actor = Actor(
        name="webhook", workspace_id=ADMIN.workspace_id, role=Role.ADMIN, webhook_id=webhook_id
    )
    with pytest.raises(Forbidden):
        automations.delete(automation_id, actor=actor)
    assert hook["id"] == str(webhook_id)


def test_a_signature_is_checked_against_the_secret_the_body_and_the_clock() -> None:
    from core.secrets import verify_signature

    body, now = b'{"a": 1}', 1_800_000_000
    header = signature_header("whsec_s", now - 10, body)

    def ok(h: str, b: bytes = body, at: int = now, secret: str = "whsec_s") -> bool:
        return verify_signature(secret, h, b, now=at, tolerance_s=SIGNATURE_TOLERANCE_S)

    assert ok(header)
    assert ok(f"{header},v1=deadbeef") and ok(f"t={now - 10},v1=00,{header.split(',')[1]}")
    assert not ok(header, secret="whsec_other")
    assert not ok(header, b'{"a": 2}')
    assert not ok(header, at=now + SIGNATURE_TOLERANCE_S)
    assert not ok(header, at=now - SIGNATURE_TOLERANCE_S - 20)  # from the future
    assert not ok("") and not ok("t=,v1=") and not ok(header.split(",")[1])


def test_the_procfile_api_serves_webhooks_one_run_per_delivery_under_concurrent_repeats(
    client: TestClient, admin: dict[str, str], worker: Any, agent: Any, api_process: ApiProcess
) -> None:
    # given the Procfile's `api` process and an enabled webhook
    hook = enable(client, admin, make_automation(agent_url=agent.url, steps=1))
    base = api_process.url
    path = f"/v1/hooks/{hook['id']}"
    body = json.dumps(PAYLOAD).encode()

    # when one delivery is sent 6 times at once, each signed
    def deliver(_: int) -> httpx.Response:
        headers = {**signed(hook["secret"], body), "Stepwise-Delivery": "evt_1"}
        return httpx.post(base + path, content=body, headers=headers, timeout=10)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(deliver, range(6)))
    # then every answer names the same run, and one run called the agent with the payload
    assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
    (execution_id,) = {a.json()["execution_id"] for a in answers}
    wait_for(lambda: agent.calls_for(execution_id), message="the run at the agent")
    assert agent.calls_for(execution_id)[0].body["input"] == PAYLOAD
    assert [str(e.id) for e in _executions()] == [execution_id]

    # and a body streamed without a length is cut off past 64 KiB
    def chunks() -> Iterator[bytes]:
        yield b'{"a": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    big = httpx.post(
        base + path,
        content=chunks(),
        headers={"Stepwise-Hook-Secret": hook["secret"]},
        timeout=10,
    )
    assert big.status_code == 413 and big.headers["content-type"] == PROBLEM
    # and the secret never reached the process's log
    assert hook["secret"] not in api_process.log()
    assert len(_executions()) == 1


def test_delivery_ids_are_per_webhook(client: TestClient, admin: dict[str, str]) -> None:
    # given two automations' webhooks (two senders may well number their events alike)
    first_id, second_id = make_automation(), make_automation(name="other")
    first, second = enable(client, admin, first_id), enable(client, admin, second_id)

    def deliver(hook: dict[str, Any]) -> str:
        proof = {"Stepwise-Hook-Secret": hook["secret"], "Stepwise-Delivery": "evt_1"}
        answer = post(client, hook["url"], b"{}", proof)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["execution_id"])

    # when each gets the same delivery id, twice
    runs = [deliver(first), deliver(second), deliver(first), deliver(second)]
    # then each webhook started one run of its own automation: the id is the sender's, per URL
    assert runs[0] == runs[2] and runs[1] == runs[3] and runs[0] != runs[1]
    started = {str(e.id): e.automation_id for e in _executions()}
    assert started == {runs[0]: first_id, runs[1]: second_id}


def test_a_delivery_id_is_remembered_as_long_as_its_run(
    client: TestClient, admin: dict[str, str]
) -> None:
    from tasks import periodic

    # given a delivery whose run has finished
    hook = enable(client, admin, make_automation())
    proof = {"Stepwise-Hook-Secret": hook["secret"], "Stepwise-Delivery": "evt_old"}
    first = post(client, hook["url"], b'{"n": 1}', proof).json()["execution_id"]
    with session_scope() as session:
        session.execute(
            update(Execution).values(status="succeeded", finished_at=Execution.queued_at)
        )
    # when the history's retention has not yet passed, the id is still known
    assert periodic.purge_old_history() == 0
    assert post(client, hook["url"], b'{"n": 2}', proof).json()["execution_id"] == first
    # when housekeeping deletes the run at the end of the retention, its delivery id goes too
    with session_scope() as session:
        session.execute(update(Execution).values(queued_at=text("now() - interval '91 days'")))
    assert periodic.purge_old_history() == 1
    with session_scope() as session:
        assert session.scalar(text("SELECT count(*) FROM hook_deliveries")) == 0
    # and the same id after that starts a new run
    again = post(client, hook["url"], b'{"n": 3}', proof)
    assert again.status_code == 202 and again.json()["execution_id"] != first
    assert [e.input for e in _executions()] == [{"n": 3}]


def test_a_retried_webhook_run_sends_its_input_again(
    client: TestClient, admin: dict[str, str], worker: Any, agent: Any
) -> None:
    from stepwise.demo_agent import Call, Reply, default_reply

    # given a webhook run of 2 steps whose second step the agent refuses once
    refusals = [Reply(400, {"error": "not yet"})]

    def reply(call: Call) -> Reply:
        if call.body["step_number"] == 2 and refusals:
            return refusals.pop()
        return default_reply(call)

    agent.responder = reply
    automation_id = make_automation(agent_url=agent.url, steps=2)
    hook = enable(client, admin, automation_id)
    body = json.dumps(PAYLOAD).encode()
    execution_id = post(client, hook["url"], body, signed(hook["secret"], body)).json()[
        "execution_id"
    ]

    def status() -> Any:
        return client.get(f"/v1/executions/{execution_id}", headers=admin).json()["status"]

    wait_for(lambda: status() == "failed", message="the run to fail at step 2")
    # when it is retried
    retried = client.post(f"/v1/executions/{execution_id}/retry", headers=admin)
    assert retried.status_code in (200, 202), retried.text
    wait_for(lambda: status() == "succeeded", message="the retried run")
    # then the retried step carried the same input, and the run still shows it
    calls = agent.calls_for(execution_id)
    assert [(c.body["step_number"], c.body["input"]) for c in calls] == [
        (1, PAYLOAD),
        (2, PAYLOAD),
        (2, PAYLOAD),
    ]
    detail = client.get(f"/v1/executions/{execution_id}", headers=admin).json()
    assert detail["input"] == PAYLOAD and detail["trigger"] == "webhook"


def test_a_webhook_past_its_calls_per_minute_gets_429_and_writes_nothing(
    client: TestClient, admin: dict[str, str], redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.settings import get_settings

    # given 2 calls a minute, and two webhooks
    hook = enable(client, admin, make_automation())
    other = enable(client, admin, make_automation(name="other"))
    monkeypatch.setenv("STEPWISE_API_RATE_PER_MINUTE", "2")
    get_settings.cache_clear()
    try:
        # (not in the last seconds of Redis's minute: the calls fall in one window)
        wait_for(lambda: redis_client.time()[0] % 60 < 50, timeout=15, message="a fresh minute")
        proof = {"Stepwise-Hook-Secret": hook["secret"]}
        # when calls without the secret come first, they count for nothing
        for _ in range(3):
            assert post(client, hook["url"], b"{}", {}).status_code == 401
        # when the webhook has its 2 calls (a repeated delivery is a call too)
        for _ in range(2):
            answer = post(client, hook["url"], b"{}", {**proof, "Stepwise-Delivery": "d"})
            assert answer.status_code == 202, answer.text
        # then the third is refused with Retry-After, and writes nothing
        before = writes()
        refused = post(client, hook["url"], b'{"a": 1}', proof)
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"] == PROBLEM
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "this webhook had its 2 calls" in refused.json()["detail"]
        assert writes() == before
        # and another webhook is not held back by this one
        assert (
            post(client, other["url"], b"{}", {"Stepwise-Hook-Secret": other["secret"]}).status_code
            == 202
        )
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
