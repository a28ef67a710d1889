"""Fault test 8: an agent that misbehaves in every way the design names.

A real dramatiq Worker on the real Redis broker calls the real local agent server;
each test scripts the agent's answers and checks the retry or fail-fast decision,
the spacing between tries, and what lands on the execution and step rows.
Backoff in tests: 200 ms doubling, capped at 2 s, with dramatiq's jitter (x1..x2).
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest

from core.settings import get_settings
from db.models import Execution
from db.runs import RunMessage
from stepwise.demo_agent import Call, Reply
from stepwise.embedded import free_port
from tasks.send import send_run
from testkit.factories import execution, make_automation, make_execution, step_runs
from testkit.waiting import wait_for

pytestmark = pytest.mark.slow
FINAL = ("succeeded", "failed", "cancelled", "skipped")


def _run(agent_url: str, *, steps: int = 1, max_retries: int = 3, timeout_s: int = 5) -> uuid.UUID:
    automation_id = make_automation(
        agent_url=agent_url, steps=steps, max_retries=max_retries, step_timeout_s=timeout_s
    )
    execution_id = make_execution(automation_id)
    send_run(RunMessage(execution_id, max_retries))
    return execution_id


def _final(execution_id: uuid.UUID, timeout: float = 30) -> Execution:
    return wait_for(
        lambda: (e := execution(execution_id)).status in FINAL and e,
        timeout=timeout,
        message=f"execution {execution_id} to end",
    )


def _gaps(calls: list[Call]) -> list[float]:
    return [later.at - earlier.at for earlier, later in itertools.pairwise(calls)]


def _dead_letters(redis_client: Any) -> int:
    return int(redis_client.zcard("dramatiq:default.XQ"))


def test_500s_are_retried_with_exponential_backoff_then_fail(
    worker: Any, agent: Any, redis_client: Any
) -> None:
    # given an agent that always answers 500 and a budget of 3 retries
    agent.script(*[Reply(500, "internal trouble")] * 10)
    execution_id = _run(agent.url, max_retries=3)
    # when it runs
    done = _final(execution_id)
    # then it tried 1 + 3 times, spaced 200-400, 400-800, 800-1600 ms (+ scheduling slack)
    calls = agent.calls_for(str(execution_id))
    assert len(calls) == 4
    for gap, base in zip(_gaps(calls), (0.2, 0.4, 0.8), strict=True):
        assert base * 0.95 <= gap <= base * 2 + 0.5, _gaps(calls)
    # and the execution failed with the agent's status, every try recorded with its body
    assert done.status == "failed" and done.attempt == 4
    assert done.error == "step 1: agent answered HTTP 500 Internal Server Error"
    runs = step_runs(execution_id)
    assert [(r.attempt, r.status, r.response_status, r.response_body) for r in runs] == [
        (n, "failed", 500, "internal trouble") for n in (1, 2, 3, 4)
    ]
    assert all(r.error == "agent answered HTTP 500 Internal Server Error" for r in runs)
    # and the spent message is a dead letter
    wait_for(lambda: _dead_letters(redis_client) == 1, timeout=5, message="a dead letter")


def test_a_timeout_is_retried_and_recorded(worker: Any, agent: Any) -> None:
    # given an agent slower than the step timeout (1 s), then a fast one
    agent.script(Reply(200, {"output": "late"}, delay_s=2.5), Reply(200, {"output": "ok"}))
    execution_id = _run(agent.url, max_retries=2, timeout_s=1)
    done = _final(execution_id)
    # then the slow try failed as a timeout and the retry succeeded
    assert done.status == "succeeded" and done.attempt == 2
    first, second = step_runs(execution_id)
    assert first.status == "failed" and first.response_status is None
    assert (first.error or "").startswith("agent timed out after 1 s")
    assert first.duration_ms is not None and 900 <= first.duration_ms < 2000
    assert (second.status, second.response_status) == ("succeeded", 200)


def test_connection_refused_is_retried_then_fails_with_the_cause(worker: Any) -> None:
    # given an agent URL where nothing listens
    execution_id = _run(f"http://127.0.0.1:{free_port()}/agent", max_retries=2)
    done = _final(execution_id)
    # then 3 tries, each recorded, and the cause is on the execution
    assert done.status == "failed" and done.attempt == 3
    # (in words that do not tell a closed port from another service: tests/test_egress.py)
    assert done.error == "step 1: could not reach the agent, or it did not answer in HTTP"
    assert [r.status for r in step_runs(execution_id)] == ["failed"] * 3


def test_429_retry_after_is_honoured(worker: Any, agent: Any) -> None:
    # given an agent that asks to be left alone for 2 s (far above the 200 ms backoff)
    agent.script(Reply(429, "slow down", headers={"Retry-After": "2"}))
    execution_id = _run(agent.url, max_retries=3)
    done = _final(execution_id)
    # then the second try came no sooner than 2 s later, and succeeded
    assert done.status == "succeeded"
    calls = agent.calls_for(str(execution_id))
    (gap,) = _gaps(calls)
    assert 2.0 <= gap <= 3.5
    first = step_runs(execution_id)[0]
    assert (first.status, first.response_status, first.error) == (
        "failed",
        429,
        "agent answered HTTP 429 Too Many Requests",
    )


def test_a_400_fails_at_once(worker: Any, agent: Any, redis_client: Any) -> None:
    agent.script(Reply(400, {"error": "message too vague"}))
    execution_id = _run(agent.url, steps=2, max_retries=3)
    done = _final(execution_id)
    assert done.status == "failed" and done.attempt == 1
    assert done.error == "step 1: agent answered HTTP 400 Bad Request"
    wait_for(lambda: _dead_letters(redis_client) == 1, timeout=5, message="a dead letter")
    # no retry followed (the backoff would have been 200-400 ms)
    assert len(agent.calls_for(str(execution_id))) == 1
    (run,) = step_runs(execution_id)
    assert run.response_body == '{"error": "message too vague"}'


def test_a_non_json_body_is_stored_and_passed_on_as_text(worker: Any, agent: Any) -> None:
    agent.script(Reply(200, "<html>not json</html>"), Reply(200, "nul\x00byte"))
    execution_id = _run(agent.url, steps=3)
    done = _final(execution_id)
    assert done.status == "succeeded"
    calls = agent.calls_for(str(execution_id))
    assert calls[1].body["previous_output"] == "<html>not json</html>"
    # PostgreSQL text cannot hold NUL: it is replaced, not a crash
    assert step_runs(execution_id)[1].response_body == "nul\ufffdbyte"
    assert calls[2].body["previous_output"] == "nul\ufffdbyte"


def test_a_10_mb_body_is_stored_truncated_to_64_kib(worker: Any, agent: Any) -> None:
    limit = get_settings().max_response_bytes
    assert limit == 64 * 1024
    agent.script(Reply(200, b"x" * (10 * 1024 * 1024)))
    execution_id = _run(agent.url, steps=2)
    done = _final(execution_id)
    assert done.status == "succeeded"
    first = step_runs(execution_id)[0]
    marker = f"\n[truncated: stored the first {limit} bytes]"
    assert first.response_body == "x" * limit + marker
    # the next step gets the truncated text, never a half-parsed document
    assert agent.calls_for(str(execution_id))[1].body["previous_output"] == first.response_body


def test_a_redirect_loop_fails_at_once(worker: Any, agent: Any) -> None:
    # given an agent that redirects every POST to itself (307 keeps the method)
    agent.responder = lambda call: Reply(307, "", headers={"Location": agent.url})
    execution_id = _run(agent.url, max_retries=3)
    done = _final(execution_id)
    # then the client gave up after 5 redirects and did not retry
    assert done.status == "failed" and done.attempt == 1
    assert done.error == "step 1: agent redirected more than 5 times (redirect loop?)"
    assert len(agent.calls) == 6


def test_a_redirect_that_turns_the_post_into_a_get_is_not_a_success(
    worker: Any, agent: Any
) -> None:
    # given an agent URL that answers 302 (clients follow it with a GET, body dropped)
    agent.responder = lambda call: Reply(302, "", headers={"Location": agent.url + "/moved"})
    execution_id = _run(agent.url, max_retries=3)
    done = _final(execution_id)
    # then the step fails at once: the agent never received the step's message
    assert done.status == "failed" and done.attempt == 1
    assert done.error == (
        f"step 1: agent redirected with HTTP 302 to {agent.url}/moved; "
        "set the automation's agent URL to the final address"
    )
    assert [c.path for c in agent.calls] == ["/agent"]
