"""Logs (`core.logs`): one setup for every process, JSON lines with the run's ids, no secret.

The end-to-end test runs the Procfile's release, api, web, scheduler, dispatcher and worker
as real processes, a run whose agent needs a secret header (its first call answered 500, so
the worker says it retries) and token-authenticated API calls, then reads every line
every process wrote.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from typing import Any

import httpx
import pytest

from core import logs
from db.runs import RunMessage
from service.secrets import set_secret
from stepwise.demo_agent import Reply
from stepwise.embedded import free_port
from tasks.send import send_run
from testkit.api import bearer, make_token
from testkit.factories import ADMIN, make_automation, make_execution
from testkit.runs import ended

READY = "Worker process is ready for action"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_unless_stderr_is_a_terminal_and_the_setting_decides() -> None:
    assert logs.chosen_format("", io.StringIO()) == "json"
    assert logs.chosen_format("", _Tty()) == "text"
    assert logs.chosen_format("text", io.StringIO()) == "text"
    assert logs.chosen_format("json", _Tty()) == "json"


@pytest.mark.parametrize(
    "line",
    [
        "Authorization: Bearer abc.DEF-123",
        "called with stw_Zk3lq0x9-_abcdefghijklmnop",
        "Stepwise-Hook-Secret: hunter2-hunter2",
        "GET /agent?token=s3cr3t&page=2",
        "api_key=0123456789abcdef",
    ],
)
def test_a_credential_in_a_line_is_masked(line: str) -> None:
    masked = logs.redact(line)

    assert "REDACTED" in masked
    for secret in ("abc.DEF-123", "Zk3lq0x9", "hunter2", "s3cr3t", "0123456789abcdef"):
        assert secret not in masked


def _record(message: str) -> logging.LogRecord:
    record = logging.LogRecord("tasks.flight", logging.INFO, __file__, 1, message, None, None)
    logs.RunContext().filter(record)
    return record


def test_each_run_task_logs_with_its_own_ids() -> None:
    # given two runs flown side by side on one event loop, each in its own task
    async def fly(name: str, step: int) -> dict[str, Any]:
        logs.bind_run(execution_id=name, automation_id="a", workspace_id="w", attempt=1)
        await asyncio.sleep(0)
        logs.bind_step(step)
        await asyncio.sleep(0)
        return json.loads(logs.JsonLines().format(_record(f"{name} calls")))

    async def both() -> list[dict[str, Any]]:
        return list(await asyncio.gather(fly("e1", 1), fly("e2", 3)))

    # when each logs a line, then the loop itself does
    first, second = asyncio.run(both())
    outside = json.loads(logs.JsonLines().format(_record("between runs")))

    # then each line names its own run and step, and a line outside any run names none
    assert (first["execution_id"], first["step"], first["message"]) == ("e1", 1, "e1 calls")
    assert (second["execution_id"], second["step"]) == ("e2", 3)
    assert {"automation_id", "workspace_id", "attempt"} <= first.keys()
    assert "execution_id" not in outside
    assert {"time", "level", "logger", "message", "process"} <= outside.keys()


def _lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"a line that is not JSON: {line!r}") from None
    return parsed


@pytest.mark.slow
def test_every_process_logs_json_with_the_run_ids_and_no_secret(procs: Any, agent: Any) -> None:
    # given an automation whose agent needs a secret header, and an API token
    secret = f"agent-secret-{uuid.uuid4().hex}"
    set_secret("AGENT_TOKEN", secret, actor=ADMIN, origins=[agent.url])
    automation_id = make_automation(
        agent_url=agent.url,
        request_headers=(("X-Agent-Key", "{{ secret.AGENT_TOKEN }}"),),
        max_retries=2,
    )
    token = make_token()
    agent.script(Reply(500, {"error": "busy"}))  # the first call fails: the worker retries

    # when the Procfile's processes run it, and the API is called with the token
    procs.start("release")
    assert procs.running["release"].wait(60) == 0
    procs.start("worker")
    procs.start("dispatcher")
    procs.start("scheduler")
    procs.wait_ready("worker", READY)
    procs.wait_ready("dispatcher", READY)
    api = f"http://127.0.0.1:{free_port()}"
    procs.start("api", STEPWISE_API_PORT=api.rsplit(":", 1)[1])
    procs.wait_http("api", f"{api}/health")
    web = f"http://127.0.0.1:{free_port()}"
    procs.start("web", PORT=web.rsplit(":", 1)[1])
    procs.wait_http("web", f"{web}/_stcore/health")
    execution_id = make_execution(automation_id)
    send_run(RunMessage(execution_id, 2))
    done = ended(execution_id, timeout=60, agent=agent)
    answer = httpx.get(f"{api}/v1/executions/{execution_id}", headers=bearer(token))
    refused = httpx.get(f"{api}/v1/automations", headers=bearer(token + "x"))
    procs.wait_ready("scheduler", "Starting Periodiq", timeout=30)
    procs.stop_all()  # what they log as they stop is read too

    # then the run succeeded on its retry, the agent got the secret, the API answered
    assert done.status == "succeeded"
    assert agent.calls_for(str(execution_id))[-1].headers["x-agent-key"] == secret
    assert (answer.status_code, refused.status_code) == (200, 401)
    # and every line of every process is a JSON object, none with the secret or the token
    names = ("release", "api", "web", "worker", "dispatcher", "scheduler")
    written = {key: procs.log(key) for key in names}
    loggers = set()
    for key, text in written.items():
        for line in _lines(text):
            assert {"time", "level", "logger", "message"} <= line.keys(), (key, line)
            loggers.add(line["logger"].split(".")[0])
        assert secret not in text and token not in text, f"{key} logged a credential"
    # and Dramatiq's, periodiq's, uvicorn's and alembic's lines went through the same setup
    assert {"dramatiq", "periodiq", "uvicorn", "alembic", "streamlit"} <= loggers
    # and the worker's line about the retry names the run, its step and attempt
    retry = [
        line
        for line in _lines(written["worker"])
        if line.get("execution_id") == str(execution_id) and "retry" in line["message"]
    ]
    assert retry, written["worker"][-3000:]
    assert retry[0]["automation_id"] == str(automation_id)
    assert retry[0]["workspace_id"] == str(ADMIN.workspace_id)
    assert (retry[0]["step"], retry[0]["attempt"]) == (1, 1)
