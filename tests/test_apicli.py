"""`stepwise api ...` against the Procfile's real `api` process, with a real token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core.settings import get_settings
from stepwise.apicli import RUN_NOT_SUCCEEDED
from stepwise.demo_agent import Reply
from testkit.api import ApiProcess, bearer, make_token
from testkit.cli import cli
from testkit.factories import make_automation, make_schedule


@pytest.fixture
def api(
    db: None, redis_client: Any, api_process: ApiProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """`stepwise api` pointed at the Procfile's `api` with a new admin token; the token."""
    token = make_token(name="scripts")
    monkeypatch.setenv("STEPWISE_API_URL", api_process.url)
    monkeypatch.setenv("STEPWISE_API_TOKEN", token)
    get_settings.cache_clear()
    yield token
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.mark.slow
def test_list_pause_resume_trigger_and_tail_a_real_run(
    api: str, agent: Any, worker: Any, capsys: Any
) -> None:
    automation_id = make_automation(agent_url=agent.url, steps=2, max_retries=0)
    schedule_id = make_schedule(automation_id)
    capsys.readouterr()
    assert cli("api", "list", "schedules") == 0
    assert str(schedule_id) in capsys.readouterr().out
    assert cli("api", "pause", str(schedule_id), "--note", "maintenance") == 0
    paused = json.loads(capsys.readouterr().out)
    assert paused["enabled"] is False and paused["pause_note"] == "maintenance"
    assert cli("api", "resume", str(schedule_id)) == 0
    assert json.loads(capsys.readouterr().out)["enabled"] is True
    assert cli("api", "trigger", str(automation_id)) == 0
    execution_id = json.loads(capsys.readouterr().out)["execution_id"]
    assert cli("api", "tail", execution_id, "--interval", "0.2") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("step 1 ") and out[1].startswith("step 2 ")
    assert out[-1] == "run succeeded"


def test_list_automations_follows_every_page(api: str, capsys: Any) -> None:
    # given more automations than one page of the API holds
    made = {str(make_automation(name=f"automation {i:03}")) for i in range(105)}
    capsys.readouterr()
    # when a script lists them, then it gets every one, once
    assert cli("api", "list", "automations") == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(a["id"] for a in listed) == sorted(made)


@pytest.mark.slow
def test_tail_of_a_failed_run_exits_non_zero_with_json_lines(
    api: str, agent: Any, worker: Any, capsys: Any
) -> None:
    automation_id = make_automation(agent_url=agent.url, steps=2, max_retries=0)
    agent.script(Reply(500, {"error": "the agent broke"}))
    capsys.readouterr()
    assert cli("api", "trigger", str(automation_id)) == 0
    execution_id = json.loads(capsys.readouterr().out)["execution_id"]
    assert cli("api", "tail", execution_id, "--interval", "0.2", "--json") == RUN_NOT_SUCCEEDED
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(s["step_number"], s["status"]) for s in lines[:-1]] == [(1, "failed")]
    assert lines[-1]["id"] == execution_id and lines[-1]["status"] == "failed"


def test_trigger_with_input_and_a_key_then_list_every_page(api: str, capsys: Any) -> None:
    # given an automation (no worker: the runs stay queued)
    automation_id = make_automation()
    capsys.readouterr()
    # when a script triggers it with an input and a key, twice (a retry), then once more
    started = []
    for key in ("deploy-7", "deploy-7", "deploy-8"):
        argv = ("api", "trigger", str(automation_id), "--input", '{"order": 42}')
        assert cli(*argv, "--idempotency-key", key) == 0
        started.append(json.loads(capsys.readouterr().out)["execution_id"])
    # then the repeat answered with the first run, and the other key made a second one
    assert started[0] == started[1] != started[2]
    # and listing a page of one at a time, every page, gives both runs with their input
    argv = ("api", "list", "executions", "--automation", str(automation_id))
    assert cli(*argv, "--limit", "1", "--all") == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(r["id"] for r in listed["items"]) == sorted(set(started))
    assert listed["next_cursor"] is None
    assert cli(*argv, "--limit", "1") == 0
    page = json.loads(capsys.readouterr().out)
    assert len(page["items"]) == 1 and page["next_cursor"]
    run = httpx.get(
        f"{get_settings().api_url}/v1/executions/{started[0]}",
        headers=bearer(api),
    ).json()
    assert run["input"] == {"order": 42}
    # and an input that is not JSON is named, and nothing is sent
    assert cli("api", "trigger", str(automation_id), "--input", "{order") == 2
    assert "--input is not JSON" in capsys.readouterr().err
    assert cli(*argv, "--all") == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 2


def test_an_error_prints_the_problem_detail_and_exits_non_zero(api: str, capsys: Any) -> None:
    assert cli("api", "resume", "not-a-uuid") == 1
    assert "422" in capsys.readouterr().err
    assert cli("api", "tail", "00000000-0000-0000-0000-000000000000") == 1
    err = capsys.readouterr().err
    assert "404" in err and "does not exist" in err


def test_missing_settings_are_named(monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.delenv("STEPWISE_API_URL", raising=False)
    monkeypatch.setenv("STEPWISE_API_TOKEN", "")
    get_settings.cache_clear()
    try:
        assert cli("api", "list", "automations") == 2
    finally:
        get_settings.cache_clear()
    assert "STEPWISE_API_URL" in capsys.readouterr().err
