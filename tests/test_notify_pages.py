"""The notification parts of the Workspace and Automations pages, through Streamlit's AppTest."""

from __future__ import annotations

import pytest

from db import channels
from db.audit import AuditFilters, list_audit
from db.session import session_scope
from service import channels as channel_service
from testkit.factories import ADMIN, make_automation, person
from testkit.pages import open_view
from testkit.receivers import Receiver

SECRET = "tok-Pq77page"
pytestmark = pytest.mark.usefixtures("db")


def test_an_admin_adds_a_channel_sends_a_test_and_sees_the_delivery(receiver: Receiver) -> None:
    # given the local admin on the Workspace page
    at = open_view("workspace")
    url = f"json://hook:{SECRET}@127.0.0.1:{receiver.port}/hooks/{SECRET}"
    # when they add a channel and send a test to it
    at.text_input(key="ws_channel_name").input("on-call hook")  # in a form: sent with its button
    at.text_input(key="ws_channel_url").input(url)  # in a form: sent with its button
    at.button(key="ws_channel_add").click().run()
    assert not at.exception, at.exception
    at.button(key="ws_channel_test").click().run()
    assert not at.exception, at.exception
    # then the test arrived, the channel shows redacted and the delivery is listed as ok
    assert [p[2]["title"] for p in receiver.posts] == ["Stepwise: test notification"]
    tables = " ".join(t.value.to_string() for t in at.dataframe)
    assert "json://127.0.0.1/…" in tables and "on-call hook" in tables
    assert "test" in tables and "ok" in tables
    assert at.text_input(key="ws_channel_url").value == ""  # not kept in the session
    assert SECRET not in repr(at)
    with session_scope() as session:
        actions = [r.action for r in list_audit(session, AuditFilters(), actor=ADMIN)][:2]
    assert actions == ["test_channel", "add_channel"]


def test_a_bad_url_is_refused_on_the_page_and_writes_nothing() -> None:
    at = open_view("workspace")
    at.text_input(key="ws_channel_name").input("ftp")  # in a form: sent with its button
    at.text_input(key="ws_channel_url").input(
        "ftp://files.example.com/x"
    )  # in a form: sent with its button
    at.button(key="ws_channel_add").click().run()
    assert any("use one of" in str(e.value) for e in at.error)
    with session_scope() as session:
        assert channels.list_channels(session, actor=ADMIN) == []


def test_the_automations_form_chooses_channels_and_a_threshold() -> None:
    channel = channel_service.add_channel("mail", "json://hooks.example.com/x", actor=ADMIN)
    automation_id = make_automation(name="Nightly")
    at = open_view("automations")
    at.selectbox(key="auto_selected").set_value(str(automation_id)).run()
    key = f"notify_{automation_id}"
    at.multiselect(key=f"{key}_channels").set_value([channel.id]).run()
    at.number_input(key=f"{key}_threshold").set_value(3).run()
    at.button(key=f"{key}_save").click().run()
    assert not at.exception, at.exception
    with session_scope() as session:
        chosen = channels.get_notifications(session, automation_id, actor=person("local admin"))
    assert chosen == channels.Notifications((channel.id,), 3)
