"""A run's input: parsed once, stored with the schedule and the run, sent to the agent with
every step, returned by the API and shown on the run page."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from core.errors import ValidationFailed
from core.limits import MAX_INPUT_BYTES, MAX_OUTPUT_DEPTH
from core.run_input import parse_run_input
from db.models import Execution
from db.session import session_scope
from tasks import periodic
from tasks.send import send_run
from testkit.factories import make_automation, make_schedule, table_snapshot
from testkit.pages import execution_page
from testkit.waiting import wait_for

INPUT = {"customer": "ACME", "items": [1, 2, 3], "note": "<b>not html</b>"}


def _refused(value: Any) -> str:
    with pytest.raises(ValidationFailed) as refused:
        parse_run_input(value)
    (error,) = refused.value.errors
    assert error.field == "input"
    return error.message


# --- parsing (no server) ------------------------------------------------------------------


def test_input_is_a_json_object_from_text_bytes_or_a_decoded_value() -> None:
    assert parse_run_input(None) is None
    assert parse_run_input("  \n") is None
    assert parse_run_input('{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}
    assert parse_run_input(b'{"a": 1}') == {"a": 1}
    assert parse_run_input({"a": "é"}) == {"a": "é"}
    assert parse_run_input({}) == {}


def test_bad_input_is_refused_with_a_message_naming_the_field() -> None:
    assert "not valid JSON" in _refused('{"a": 1,}')
    assert "line 1 column" in _refused('{"a": 1,}')
    assert "JSON object" in _refused("[1, 2]")
    assert "JSON object" in _refused('"text"')
    assert "not valid JSON" in _refused('{"a": NaN}')
    assert "NUL" in _refused({"a": "\x00"})
    assert "NUL" in _refused('{"a": "\\ud800"}')
    assert "64 KiB" in _refused({"a": "x" * MAX_INPUT_BYTES})
    assert "64 KiB" in _refused(" " * (MAX_INPUT_BYTES + 1) + "{}")
    deep = '{"a": ' * (MAX_OUTPUT_DEPTH + 1) + "1" + "}" * (MAX_OUTPUT_DEPTH + 1)
    assert "nest" in _refused(deep)
    assert "nest" in _refused("[" * 60_000)
    assert "UTF-8" in _refused(b'{"a": "\xff"}')


# --- at the agent ----------------------------------------------------------------------------


def test_a_schedules_input_is_stored_with_its_run_and_reaches_the_agent_each_step(
    worker: Any, agent: Any
) -> None:
    # given a schedule with an input, due in a few seconds
    automation_id = make_automation(agent_url=agent.url, steps=2)
    schedule_id = make_schedule(
        automation_id, kind="interval", interval_s=3600, input=json.dumps(INPUT)
    )
    # when dispatch runs it
    assert periodic.dispatch_due(send_run) == 1

    def ran() -> Any:
        with session_scope() as session:
            row = session.scalars(select(Execution).where(Execution.schedule_id == schedule_id))
            done = row.one_or_none()
            return done is not None and done.status == "succeeded" and done

    done = wait_for(ran, message="the scheduled run")
    # then the run row keeps the input it ran with, and every step carried it
    assert done.input == INPUT
    calls = agent.calls_for(str(done.id))
    assert [c.body["input"] for c in calls] == [INPUT, INPUT]


def test_a_manual_runs_input_reaches_the_agent_the_api_and_the_run_page(
    client: TestClient, admin: dict[str, str], worker: Any, agent: Any
) -> None:
    # given an automation
    automation_id = make_automation(agent_url=agent.url, steps=2)
    # when a manual run is started through the API with an input
    started = client.post(
        f"/v1/automations/{automation_id}/run", json={"input": INPUT}, headers=admin
    )
    assert started.status_code == 202, started.text
    execution_id = started.json()["execution_id"]
    # then every step at the agent received it
    wait_for(lambda: len(agent.calls_for(execution_id)) == 2, message="both steps")
    assert [c.body["input"] for c in agent.calls_for(execution_id)] == [INPUT, INPUT]
    # and the API returns it with the run
    detail = client.get(f"/v1/executions/{execution_id}", headers=admin).json()
    assert detail["input"] == INPUT and detail["trigger"] == "manual"
    # and the run page shows it as JSON data (never as markup)
    at = execution_page(execution_id)
    first, *steps_shown = [json.loads(e.proto.body) for e in at.get("json")]
    assert first == INPUT  # above the steps' requests (which do not repeat it)
    assert all("input" not in request["body"] for request in steps_shown)
    assert any("Input" in str(m.value) for m in at.markdown)


def test_a_schedule_input_is_saved_returned_and_used_by_trigger_now(
    client: TestClient, admin: dict[str, str], worker: Any, agent: Any
) -> None:
    automation_id = make_automation(agent_url=agent.url, steps=1)
    body = {"automation_id": str(automation_id), "kind": "cron", "cron_expr": "0 0 1 1 *"}
    made = client.post("/v1/schedules", json={**body, "input": INPUT}, headers=admin)
    assert made.status_code == 201, made.text
    schedule = made.json()
    assert schedule["input"] == INPUT
    # when triggered now without a body, the run takes the schedule's input
    run = client.post(f"/v1/schedules/{schedule['id']}/trigger", headers=admin).json()
    # and with a body, the body's
    other = client.post(
        f"/v1/schedules/{schedule['id']}/trigger", json={"input": {"x": 1}}, headers=admin
    ).json()
    wait_for(lambda: agent.calls_for(other["execution_id"]), message="the second run")
    wait_for(lambda: agent.calls_for(run["execution_id"]), message="the first run")
    assert agent.calls_for(run["execution_id"])[0].body["input"] == INPUT
    assert agent.calls_for(other["execution_id"])[0].body["input"] == {"x": 1}


def test_bad_input_through_the_api_gets_a_field_message_and_writes_nothing(
    client: TestClient, admin: dict[str, str]
) -> None:
    automation_id = make_automation()
    before = table_snapshot()
    schedule = {"automation_id": str(automation_id), "kind": "cron", "cron_expr": "* * * * *"}
    refused = [
        client.post("/v1/schedules", json={**schedule, "input": {"a": "x" * MAX_INPUT_BYTES}}),
        client.post(f"/v1/automations/{automation_id}/run", json={"input": [1]}),
        client.post(f"/v1/automations/{automation_id}/run", json={"input": {"a": "\x00"}}),
    ]
    for answer in refused:
        assert answer.status_code == 401  # no token: refused before anything
    for answer in [
        client.post(
            "/v1/schedules",
            json={**schedule, "input": {"a": "x" * MAX_INPUT_BYTES}},
            headers=admin,
        ),
        client.post(f"/v1/automations/{automation_id}/run", json={"input": [1]}, headers=admin),
    ]:
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in answer.json()["errors"]] == ["input"]
    after = {k: v for k, v in table_snapshot().items() if k != "api_tokens"}
    assert after == {k: v for k, v in before.items() if k != "api_tokens"}


def test_an_unknown_run_is_not_a_crash(client: TestClient, admin: dict[str, str]) -> None:
    answer = client.post(f"/v1/automations/{uuid.uuid4()}/run", json={}, headers=admin)
    assert answer.status_code == 404


def test_an_input_sharing_one_list_many_times_is_refused_without_expanding_it() -> None:
    # given an input that stands for 9**9 values by sharing one list (as YAML aliases do)
    shared: list[object] = ["lol"] * 9
    for _ in range(8):
        shared = [shared] * 9
    # when it is parsed, then it is refused at once, as too big
    started = time.monotonic()
    with pytest.raises(ValidationFailed, match=r"^Input"):
        parse_run_input({"bomb": shared})
    assert time.monotonic() - started < 1
