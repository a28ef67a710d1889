"""Fault test: any agent reply is survivable.

A real dramatiq Worker on the real Redis broker calls the real local agent server,
which answers with a body no parser should trust: nested 5,000 deep, NUL escapes
that PostgreSQL refuses, invalid UTF-8, lone surrogates, numbers Python or JSONB
cannot hold, a body declared gzip that is not. Each is stored as text, the step gets
its outcome by the status alone, the agent is called once for it, and the run ends.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from stepwise.demo_agent import Reply
from tasks import periodic
from tasks.send import send_run
from testkit.factories import step_runs
from testkit.runs import ended, start_run

pytestmark = pytest.mark.slow
GZIP = {"Content-Encoding": "gzip"}

# name: (body, headers); every one a 2xx answer the run must survive.
BAD_BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    "5000 nested arrays": (b"[" * 5000, {}),
    "5000 nested arrays, closed": (b"[" * 5000 + b"]" * 5000, {}),
    "5000 nested objects": (b'{"a":' * 5000, {}),
    "5000 nested objects, closed": (b'{"a":' * 5000 + b"1" + b"}" * 5000, {}),
    "NUL escaped in a string": (b'{"output": "a\\u0000b"}', {}),
    "NUL escaped in a key": (b'{"a\\u0000": 1}', {}),
    "NUL escaped in a nested string": (b'{"a": [{"b": "\\u0000"}]}', {}),
    "invalid UTF-8": (b'{"output": "caf\xc3\x28 \xff\xfe"}', {}),
    "invalid UTF-8, not JSON": (b"\xc3\x28\xa0\xa1", {}),
    "lone high surrogate": (b'{"output": "\\ud800"}', {}),
    "lone low surrogate in a key": (b'{"\\udc00": 1}', {}),
    "huge exponent": (b'{"n": 1e999999}', {}),
    "huge negative exponent": (b'{"n": -1e999999}', {}),
    "100,000-digit integer": (b"1" * 100_000, {}),
    "5,000-digit integer": (b'{"n": ' + b"9" * 5000 + b"}", {}),
    "NaN": (b'{"n": NaN}', {}),
    "Infinity": (b"[Infinity, -Infinity]", {}),
    "a JSON array": (b"[1, 2, 3]", {}),
    "a JSON string": (b'"just text"', {}),
    "a JSON number": (b"42", {}),
    "JSON null": (b"null", {}),
    "empty": (b"", {}),
    "a BOM": (b'\xef\xbb\xbf{"output": "bom"}', {}),
    "declared gzip, not gzip": (b'{"output": "plain"}', GZIP),
    "declared gzip, garbage": (b"\x1f\x8b\x08garbage", GZIP),
    "truncated JSON": (b'{"output": "half', {}),
    "binary": (b"\x00\x01\x02\xff binary", {}),
}


def _no_loop(execution_id: uuid.UUID, agent: Any, calls: int) -> None:
    """Housekeeping finds nothing to re-send, and the agent hears nothing more."""
    assert periodic.recover_stranded(send_run) == 0
    assert len(agent.calls_for(str(execution_id))) == calls


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_a_bad_2xx_body_is_stored_as_text_and_the_run_goes_on(
    worker: Any, agent: Any, name: str
) -> None:
    # given an agent that answers both steps with the bad body and 200
    body, headers = BAD_BODIES[name]
    agent.script(Reply(200, body, headers=headers), Reply(200, body, headers=headers))
    # when a two-step run runs (the first answer is handed on, the second is the result)
    execution_id = start_run(agent.url, steps=2)
    done = ended(execution_id, timeout=15, agent=agent)
    # then each step was called once and succeeded, its body stored as text
    calls = agent.calls_for(str(execution_id))
    assert [c.body["step_number"] for c in calls] == [1, 2]
    assert done.status == "succeeded", done.error
    runs = step_runs(execution_id)
    assert [(r.step_number, r.status, r.response_status) for r in runs] == [
        (1, "succeeded", 200),
        (2, "succeeded", 200),
    ]
    assert all(r.response_body is not None and "\x00" not in r.response_body for r in runs)
    # and what step 2 received is what the run kept as its result (both storable JSON)
    assert calls[1].body["previous_output"] == done.result
    _no_loop(execution_id, agent, calls=2)


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_a_bad_4xx_body_is_stored_and_fails_the_run_at_once(
    worker: Any, agent: Any, name: str
) -> None:
    # given an agent that rejects the step with the bad body
    body, headers = BAD_BODIES[name]
    agent.script(Reply(422, body, headers=headers))
    execution_id = start_run(agent.url, steps=2)
    done = ended(execution_id, timeout=15, agent=agent)
    # then one call, the run failed with the status, the body stored as text
    assert len(agent.calls_for(str(execution_id))) == 1
    assert done.status == "failed"
    assert done.error == "step 1: agent answered HTTP 422 Unprocessable Entity"
    (run,) = step_runs(execution_id)
    assert (run.status, run.response_status) == ("failed", 422)
    assert run.response_body is not None and "\x00" not in run.response_body
    _no_loop(execution_id, agent, calls=1)


@pytest.mark.parametrize("retry_after", ["nan", "Thu, 01 Jan 2026 12:00:30 -0000"])
def test_a_retry_after_python_cannot_count_with_does_not_stop_the_run(
    worker: Any, agent: Any, retry_after: str
) -> None:
    # given an agent that answers 503 with a Retry-After that float() reads as NaN,
    # or a date that parses without a zone, and a run with no retry left
    agent.script(Reply(503, "busy", headers={"Retry-After": retry_after}))
    execution_id = start_run(agent.url, steps=1, max_retries=0)
    done = ended(execution_id, timeout=15, agent=agent)
    # then the step failed on its status, once, and the run ended
    assert done.status == "failed"
    assert done.error == "step 1: agent answered HTTP 503 Service Unavailable"
    (run,) = step_runs(execution_id)
    assert (run.status, run.response_status, run.response_body) == ("failed", 503, "busy")
    _no_loop(execution_id, agent, calls=1)
