"""Traces (`tasks.tracing`): one per run, a span per step attempt, `traceparent` to the agent.

The Procfile's worker exports by OTLP/HTTP to a real receiver in the test
(`testkit.receivers.otlp_receiver`, decoding the protobuf spans); the agent is the local
test agent, which keeps each call's headers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from db.runs import RunMessage
from stepwise.demo_agent import Reply
from tasks import tracing
from tasks.send import send_run
from testkit.factories import execution, make_automation, make_execution
from testkit.processes import ROOT
from testkit.receivers import otlp_receiver
from testkit.runs import ended
from testkit.waiting import wait_for

READY = "Worker process is ready for action"


def _hex(raw: bytes) -> str:
    return raw.hex()


def test_tracing_is_off_and_loads_no_tracer_without_an_endpoint() -> None:
    # given no OTEL_EXPORTER_OTLP_ENDPOINT, when a worker's modules are loaded
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    probe = (
        "import sys; from tasks import tracing, runner, flight;"
        "assert tracing.start('') is None;"
        "print(any(m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.exporter'))"
        " for m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True
    )

    # then neither the SDK's tracing nor an exporter was even imported
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_run_without_tracing_sends_no_traceparent_and_keeps_no_trace_id(
    worker: Any, agent: Any
) -> None:
    from testkit.runs import start_run

    execution_id = start_run(agent.url, steps=2)

    assert ended(execution_id, agent=agent).status == "succeeded"
    assert execution(execution_id).trace_id is None
    calls = agent.calls_for(str(execution_id))
    assert len(calls) == 2 and not any("traceparent" in call.headers for call in calls)


@pytest.mark.slow
def test_one_trace_per_run_a_span_per_attempt_and_the_agent_joins_it(
    procs: Any, agent: Any
) -> None:
    with otlp_receiver() as sink:
        # given the Procfile's worker exporting to a local OTLP/HTTP receiver
        procs.start(
            "worker", OTEL_EXPORTER_OTLP_ENDPOINT=sink.endpoint, OTEL_BSP_SCHEDULE_DELAY="100"
        )
        procs.wait_ready("worker", READY)
        # and two runs: a 2-step one whose first call fails (one retry), and a 1-step one
        agent.script(Reply(503, {"error": "busy"}))
        retried = make_execution(make_automation(agent_url=agent.url, steps=2, max_retries=2))
        send_run(RunMessage(retried, 2))
        assert ended(retried, timeout=60, agent=agent).status == "succeeded"
        plain = make_execution(make_automation(agent_url=agent.url, steps=1))
        send_run(RunMessage(plain, 2))
        assert ended(plain, timeout=60, agent=agent).status == "succeeded"

        # when the spans arrive (3 attempts + a root, then 1 attempt + a root)
        wait_for(lambda: len(sink.spans) >= 6, timeout=30, message="the spans to arrive")
    spans = list(sink.spans)

    # then each run is one trace, its id the execution's, stored on the execution
    by_trace: dict[str, list[Any]] = {}
    for span in spans:
        by_trace.setdefault(_hex(span.trace_id), []).append(span)
    assert set(by_trace) == {retried.hex, plain.hex}
    assert execution(retried).trace_id == retried.hex
    assert execution(plain).trace_id == plain.hex

    # and a run's trace holds its root span and one span per step attempt, under the root
    trace = by_trace[retried.hex]
    (root,) = [s for s in trace if s.name == "execution"]
    attempts = sorted(
        (s for s in trace if s.name != "execution"), key=lambda s: s.start_time_unix_nano
    )
    assert len(trace) == 4
    assert [s.name for s in attempts] == ["step 1", "step 1", "step 2"]
    assert all(s.parent_span_id == root.span_id for s in attempts)
    assert not root.parent_span_id

    def attributes(span: Any) -> dict[str, Any]:
        return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}

    first, second, third = (attributes(s) for s in attempts)
    assert (first["stepwise.outcome"], first["http.response.status_code"]) == ("failed", 503)
    assert first["stepwise.retried"] is True and first["stepwise.attempt"] == 1
    assert (second["stepwise.outcome"], second["stepwise.retried"]) == ("succeeded", False)
    assert (second["stepwise.attempt"], third["http.response.status_code"]) == (2, 200)
    assert attributes(root)["stepwise.status"] == "succeeded"
    assert len(by_trace[plain.hex]) == 2

    # and the agent received, with each call, the traceparent of that call's span
    calls = agent.calls_for(str(retried))
    sent = [call.headers["traceparent"] for call in calls]
    expected = [f"00-{retried.hex}-{_hex(s.span_id)}-01" for s in attempts]
    assert sent == expected


def test_a_run_traced_by_its_execution_id() -> None:
    execution_id = uuid.uuid4()

    assert tracing.trace_id_of(execution_id) == f"{execution_id.int:032x}"
