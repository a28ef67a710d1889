"""Run input and webhooks on the dashboard, through AppTest on real Postgres and Redis:
the schedule dialog's input, the Automations page's test-run input and webhook."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from core.settings import get_settings
from db import queries, webhooks
from db.models import Execution, Webhook
from db.session import session_scope
from testkit.factories import ADMIN, add_executions, make_automation, table_snapshot
from testkit.pages import execution_page, open_new_schedule, open_view, texts
from testkit.waiting import wait_for

pytestmark = pytest.mark.usefixtures("db", "redis_client")


def test_a_schedule_gets_its_input_in_the_dialog_and_bad_json_is_shown_not_saved() -> None:
    make_automation(name="Reports")
    at = open_new_schedule()
    # when the input is not JSON, the field says why and nothing is saved
    at.text_area(key="sd_input").input('{"a": 1,}').run()
    before = table_snapshot()
    at.button(key="sd_save").click().run()
    assert "is not valid JSON" in texts(at)
    assert table_snapshot() == before
    # when it is a JSON object, it is saved with the schedule
    at.text_area(key="sd_input").input('{"report": "weekly"}').run()
    at.button(key="sd_save").click().run()
    assert not at.exception, at.exception
    with session_scope() as session:
        [row] = queries.list_schedules(session, actor=ADMIN)
    assert row.input == {"report": "weekly"}


def test_a_test_run_carries_its_input_to_the_agent(agent: Any, worker: Any) -> None:
    auto = make_automation(agent_url=agent.url, steps=1, name="Tested")
    at = open_view("automations")
    at.selectbox(key="auto_selected").set_value(str(auto)).run()
    at.text_area(key=f"auto_{auto}_run_input").input("[1]").run()
    at.button(key=f"auto_{auto}_test").click().run()
    assert "Test run input: must be a JSON object" in texts(at)
    at.text_area(key=f"auto_{auto}_run_input").input('{"customer": "ACME"}').run()
    at.button(key=f"auto_{auto}_test").click().run()
    assert not at.exception, at.exception
    with session_scope() as session:
        (execution_id,) = session.scalars(select(Execution.id)).all()
    wait_for(lambda: agent.calls_for(str(execution_id)), message="the test run")
    assert agent.calls_for(str(execution_id))[0].body["input"] == {"customer": "ACME"}


def test_an_editor_enables_a_webhook_sees_its_secret_once_rotates_and_disables_it() -> None:
    auto = make_automation(name="Hooked")
    at = open_view("automations")
    at.selectbox(key="auto_selected").set_value(str(auto)).run()
    assert "Off: no URL starts this automation." in texts(at)
    # when enabled, the secret is shown once, with the URL
    at.button(key=f"auto_{auto}_webhook_on").click().run()
    assert not at.exception, at.exception
    with session_scope() as session:
        hook = session.scalars(select(Webhook)).one()
    codes = [c.value for c in at.code]
    secret = next(c for c in codes if c.startswith("whsec_"))
    port = get_settings().api_listen_port()
    assert f"http://127.0.0.1:{port}/v1/hooks/{hook.id}" in codes
    assert secret not in hook.secret
    at.run()
    assert not any(c.startswith("whsec_") for c in [c.value for c in at.code])
    # when rotated, a new secret is shown once and the old one no longer proves a call
    at.button(key=f"auto_{auto}_webhook_rotate").click().run()
    rotated = next(c.value for c in at.code if c.value.startswith("whsec_"))
    assert rotated != secret
    with session_scope() as session:
        assert webhooks.authenticate(session, hook.id, b"{}", secret=secret, signature=None) is None
        assert webhooks.authenticate(session, hook.id, b"{}", secret=rotated, signature=None)
    # when disabled, it is gone
    at.button(key=f"auto_{auto}_webhook_off").click().run()
    assert not at.exception, at.exception
    assert "Webhook disabled" in texts(at)
    with session_scope() as session:
        assert session.scalars(select(Webhook)).all() == []


def test_webhook_runs_are_a_trigger_of_the_history_and_their_input_is_shown_as_data() -> None:
    # given a webhook run whose input holds markup, and a manual run
    hostile = {"note": "![x](http://127.0.0.1:1/x.png) <script>alert(1)</script> :red[boom]"}
    auto = make_automation(name="Hooked")
    hooked, _manual = add_executions(auto, [{"trigger": "webhook", "input": hostile}, {}])
    # when the history is filtered by the webhook trigger (from a link)
    at = open_view("executions", query={"trigger": "webhook"})
    # then only the webhook run is listed, and the filter offers the trigger
    assert "webhook" in at.selectbox(key="ex_trigger").options
    assert at.selectbox(key="ex_trigger").value == "webhook"
    assert list(at.dataframe[0].value["Id"]) == [str(hooked)]
    assert list(at.dataframe[0].value["Trigger"]) == ["webhook"]
    # and its run page shows the input as JSON data, never as Markdown
    run = execution_page(hooked)
    assert json.loads(run.get("json")[0].proto.body) == hostile
    assert "script" not in texts(run) and "boom" not in texts(run)
    assert "webhook" in texts(run)
