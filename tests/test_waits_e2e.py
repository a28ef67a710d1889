"""The whole way of an async step: a real local agent answers 202 at once and POSTs its result
to the `callback_url` its call carried, from a thread, later; the real worker parks the run,
the real `api` process takes the callback and wakes it, and the dependent step receives the
output. Then an approval decided through the API lets the run end."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.vocabulary import ExecutionStatus, Role, StepStatus
from db.runs import RunMessage
from stepwise.demo_agent import AgentServer, Call, Reply, default_reply
from tasks.send import send_run
from testkit.api import ApiProcess, bearer, make_token
from testkit.factories import execution, make_execution, make_graph, step_runs
from testkit.processes import READY, Processes
from testkit.runs import ended
from testkit.waiting import wait_for

pytestmark = pytest.mark.slow

OUTPUT = {"summary": "3 sources read", "sources": ["a", "b", "c"]}
GRAPH: list[dict[str, Any]] = [
    {"key": "fetch", "kind": "async", "message": "Fetch {{ input.topic }}", "timeout_s": 600},
    {
        "key": "sign",
        "kind": "approval",
        "needs": ["fetch"],
        "message": "Use {{ steps.fetch.output.summary }}?",
    },
    {"key": "use", "needs": ["fetch", "sign"], "message": "Use {{ steps.fetch.output.summary }}"},
]


class LaterAgent:
    """An agent that answers an async step's call 202 at once and, from a thread, POSTs its
    output to the call's callback_url (sent again after Retry-After when asked, as an
    agent should); every other call is answered at once."""

    def __init__(self) -> None:
        self.server = AgentServer()
        self.server.responder = self.reply
        self.callbacks: list[int] = []  # the status of each callback POST, in order
        self.threads: list[threading.Thread] = []

    def reply(self, call: Call) -> Reply:
        body = call.body if isinstance(call.body, dict) else {}
        url = body.get("callback_url")
        if not isinstance(url, str):
            return default_reply(call)
        thread = threading.Thread(target=self.call_back, args=(url,), daemon=True)
        self.threads.append(thread)
        thread.start()
        return Reply(202, {"accepted": True})

    def call_back(self, url: str) -> None:
        with httpx.Client(timeout=10) as client:
            for _ in range(30):
                answer = client.post(url, json={"progress": 50, "note": "reading"})
                if answer.status_code != 503:
                    break
                time.sleep(float(answer.headers.get("retry-after", "1")))
            self.callbacks.append(answer.status_code)
            self.callbacks.append(client.post(url, json={"output": OUTPUT}).status_code)
            # a second answer changes nothing
            self.callbacks.append(client.post(url, json={"output": "again"}).status_code)


@pytest.fixture
def later_agent() -> Iterator[LaterAgent]:
    agent = LaterAgent()
    agent.server.start()
    yield agent
    agent.server.stop()


@pytest.fixture
def worker_for(
    db: None, redis_client: Any, api_process: ApiProcess, tmp_path: Path
) -> Iterator[Processes]:
    """The Procfile's worker, building callback URLs that reach the `api` process."""
    procs = Processes(
        tmp_path,
        STEPWISE_WORKER_PROCESSES="1",
        STEPWISE_WORKER_THREADS="4",
        STEPWISE_PUBLIC_URL=api_process.url,
    )
    procs.start("worker")
    try:
        procs.wait_ready("worker", READY)
        yield procs
    finally:
        procs.stop_all()


def test_an_agent_that_answers_later_completes_its_run(
    later_agent: LaterAgent, worker_for: Processes, api_process: ApiProcess
) -> None:
    # given a graph: an async step, an approval after it, a step that needs both
    automation_id = make_graph(GRAPH, agent_url=later_agent.server.url, max_retries=0)
    execution_id = make_execution(automation_id, input={"topic": "waits"})
    # when it runs on the real worker
    send_run(RunMessage(execution_id, 0))
    # then the agent's callbacks are taken: progress, the output once, the second refused
    wait_for(lambda: len(later_agent.callbacks) == 3, timeout=60, message="the callbacks")
    assert later_agent.callbacks == [200, 200, 409]
    # and the run goes on to the approval, where it parks (no worker holds it)
    wait_for(
        lambda: (
            execution(execution_id).status == ExecutionStatus.WAITING
            and any(
                r.step_key == "sign" and r.status == StepStatus.WAITING
                for r in step_runs(execution_id)
            )
        ),
        timeout=60,
        message="the run to park on its approval",
    )
    fetched = next(r for r in step_runs(execution_id) if r.step_key == "fetch")
    assert fetched.status == StepStatus.SUCCEEDED and fetched.wait is not None
    assert (fetched.wait["progress"], fetched.wait["note"]) == (50, "reading")
    # when an editor approves it through the API
    editor = bearer(make_token(role=Role.EDITOR, name="approver"))
    with httpx.Client(base_url=api_process.url, timeout=10) as api:
        answer = api.post(
            f"/v1/executions/{execution_id}/steps/sign/approve",
            json={"comment": "go"},
            headers=editor,
        )
    assert answer.status_code == 200, answer.text
    # then the run completes, and the dependent step received the agent's output
    done = ended(execution_id, timeout=60, agent=later_agent.server)
    assert done.status == ExecutionStatus.SUCCEEDED, done.error
    [use] = [
        c for c in later_agent.server.calls_for(str(execution_id)) if c.body["step_key"] == "use"
    ]
    assert use.body["steps"]["fetch"]["output"] == OUTPUT
    assert use.body["steps"]["sign"]["output"] == {
        "approved": True,
        "by": "API token approver",
        "comment": "go",
    }
    assert use.body["message"] == "Use 3 sources read"
    # and the callback URL was sent to the agent, never stored
    [fetch_call] = [
        c for c in later_agent.server.calls_for(str(execution_id)) if c.body["step_key"] == "fetch"
    ]
    assert fetch_call.body["callback_url"].startswith(f"{api_process.url}/v1/callbacks/")
    assert "callback_url" not in (fetched.request.get("body") or {})
