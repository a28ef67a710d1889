"""Workflow graphs run by real workers: parallel calls, joins, conditions, fan-out, failure,
retry and cancel.

The worker is a real Dramatiq worker in this process (its runner, group commits, flow
control), the agent a real HTTP server on loopback that records every call, the database
and Redis the suite's own.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from typing import Any

from db.runs import RunMessage
from service import executions as execution_service
from stepwise.demo_agent import Call, Reply
from tasks.send import send_run
from testkit.factories import ADMIN, execution, make_execution, make_graph, step_runs
from testkit.processes import READY, group_alive, worker_in_process
from testkit.runs import ended
from testkit.waiting import wait_for


def _run_graph(automation_id: uuid.UUID, run_input: Any = None, max_retries: int = 0) -> uuid.UUID:
    values = {} if run_input is None else {"input": run_input}
    execution_id = make_execution(automation_id, **values)
    send_run(RunMessage(execution_id, max_retries))
    return execution_id


def _keys(agent: Any, execution_id: uuid.UUID) -> list[str]:
    return [c.body["step_key"] for c in agent.calls_for(str(execution_id))]


def _latest(execution_id: uuid.UUID) -> dict[tuple[str, int | None], Any]:
    """The latest step run of each step key and item."""
    return {(r.step_key, r.item): r for r in step_runs(execution_id)}


class Barrier:
    """A responder holding each call of `keys` until all of them are at the agent at once;
    others answer at once. Records the moments each call arrived and left."""

    def __init__(self, keys: set[str], *, hold_s: dict[str, float] | None = None) -> None:
        self.keys = keys
        self.hold_s = hold_s or {}
        self.lock = threading.Lock()
        self.at_agent: set[str] = set()
        self.together = threading.Event()
        self.times: dict[str, tuple[float, float]] = {}

    def __call__(self, call: Call) -> Reply:
        key = call.body["step_key"]
        arrived = time.monotonic()
        if key in self.keys:
            with self.lock:
                self.at_agent.add(key)
                if self.at_agent == self.keys:
                    self.together.set()
            self.together.wait(20)
        time.sleep(self.hold_s.get(key, 0))
        with self.lock:
            self.times[key] = (arrived, time.monotonic())
        return Reply(
            200, {"from": key, "steps": call.body.get("steps"), "msg": call.body["message"]}
        )


def test_independent_steps_are_at_the_agent_together_and_a_join_waits_for_the_slowest(
    db: None, redis_client: Any, agent: Any
) -> None:
    # given a graph: two research steps with no needs, a summary needing both
    automation_id = make_graph(
        [
            {"key": "fast", "message": "fast on {{ input.topic }}"},
            {"key": "slow", "message": "slow on {{ input.topic }}"},
            {
                "key": "summary",
                "needs": ["fast", "slow"],
                "message": "sum {{ steps.fast.output.from }} and {{ steps.slow.output.from }}",
            },
        ],
        agent_url=agent.url,
    )
    barrier = Barrier({"fast", "slow"}, hold_s={"slow": 1.0})
    agent.responder = barrier
    with worker_in_process(threads=2):
        execution_id = _run_graph(automation_id, {"topic": "owls"})
        done = ended(execution_id, agent=agent)
    # then both research calls were at the agent at the same time (the barrier opened)
    assert barrier.together.is_set()
    assert done.status == "succeeded", done.error
    # and the summary started only after the slowest of them answered, once
    assert barrier.times["summary"][0] >= barrier.times["slow"][1]
    assert Counter(_keys(agent, execution_id)) == {"fast": 1, "slow": 1, "summary": 1}
    summary = next(c for c in agent.calls_for(str(execution_id)) if c.body["step_key"] == "summary")
    # with its rendered message, its needs' outputs and the chain's fields
    assert summary.body["message"] == "sum fast and slow"
    assert summary.body["steps"]["slow"]["output"]["from"] == "slow"
    assert summary.body["input"] == {"topic": "owls"}
    assert summary.idempotency_key == f"{execution_id}:summary"
    assert summary.body["previous_output"] is None  # two needs: no single previous step
    # and the run's result is the output of the step nothing depends on
    assert done.result["summary"]["from"] == "summary"
    rows = _latest(execution_id)
    assert {k: r.status for k, r in rows.items()} == {
        ("fast", None): "succeeded",
        ("slow", None): "succeeded",
        ("summary", None): "succeeded",
    }


def test_a_false_condition_skips_a_branch_and_its_dependents_but_not_an_optional_need(
    db: None, redis_client: Any, agent: Any
) -> None:
    # given a classifier, a branch taken only for "urgent", a step after that branch, and a
    # report that lists the branch as an optional need
    automation_id = make_graph(
        [
            {"key": "classify", "message": "classify"},
            {
                "key": "escalate",
                "needs": ["classify"],
                "when": "steps.classify.output.label == 'urgent'",
                "message": "escalate",
            },
            {"key": "page", "needs": ["escalate"], "message": "page someone"},
            {
                "key": "report",
                "needs": ["classify"],
                "optional_needs": ["escalate"],
                "message": "report {{ steps.escalate.output is none }}",
            },
        ],
        agent_url=agent.url,
    )
    agent.responder = lambda call: Reply(200, {"label": "calm", "key": call.body["step_key"]})
    with worker_in_process(threads=2):
        execution_id = _run_graph(automation_id)
        done = ended(execution_id, agent=agent)
    # then the branch and its dependent were skipped with their reasons, the report ran
    assert done.status == "succeeded", done.error
    assert sorted(_keys(agent, execution_id)) == ["classify", "report"]
    rows = _latest(execution_id)
    assert rows[("escalate", None)].status == "skipped"
    assert "condition is false" in rows[("escalate", None)].error
    assert rows[("page", None)].status == "skipped"
    assert rows[("page", None)].error == "step escalate was skipped"
    report = next(c for c in agent.calls_for(str(execution_id)) if c.body["step_key"] == "report")
    assert report.body["message"] == "report True"
    # and the result holds the steps nothing depends on: the skipped one as null
    assert done.result == {"page": None, "report": {"label": "calm", "key": "report"}}


def test_a_template_error_fails_its_step_at_once_and_cancels_what_did_not_start(
    db: None, redis_client: Any, agent: Any
) -> None:
    # given a step whose message reads a field its need's output does not have
    automation_id = make_graph(
        [
            {"key": "fetch", "message": "fetch"},
            {"key": "use", "needs": ["fetch"], "message": "use {{ steps.fetch.output.nope }}"},
            {"key": "after", "needs": ["use"], "message": "after"},
        ],
        agent_url=agent.url,
        max_retries=3,
    )
    with worker_in_process(threads=2):
        execution_id = _run_graph(automation_id, max_retries=3)
        done = ended(execution_id, agent=agent)
    # then the run failed naming the step and the template's error, with no retry
    assert done.status == "failed"
    assert done.error.startswith("step use: The message of step use")
    assert "nope" in done.error
    assert _keys(agent, execution_id) == ["fetch"]
    assert done.attempt == 1
    rows = _latest(execution_id)
    assert rows[("use", None)].status == "failed"
    assert rows[("after", None)].status == "cancelled"
    assert rows[("after", None)].error == "not started: step use failed"


def test_a_fan_out_of_300_calls_each_item_once_and_a_retry_calls_only_the_failed_item(
    db: None, redis_client: Any, agent: Any
) -> None:
    # given a fan-out over 300 items, at most 50 calls at once, whose item 137 fails for
    # good (400) on the first run once every other item has answered
    automation_id = make_graph(
        [
            {"key": "list", "message": "list"},
            {
                "key": "each",
                "needs": ["list"],
                "for_each": "steps.list.output.ids",
                "message": "do {{ item }} ({{ index }})",
                "max_retries": 1,
            },
            {"key": "total", "needs": ["each"], "message": "{{ steps.each.output | length }}"},
        ],
        agent_url=agent.url,
        concurrency_limit=50,
    )
    failing = {"on": True}
    lock = threading.Lock()
    others_done = threading.Event()
    answered = {"n": 0, "now": 0, "most": 0}

    def responder(call: Call) -> Reply:
        body = call.body
        if body["step_key"] == "list":
            return Reply(200, {"ids": [f"id-{i}" for i in range(300)]})
        if body["step_key"] != "each":
            return Reply(200, {"count": body["message"]})
        with lock:
            answered["now"] += 1
            answered["most"] = max(answered["most"], answered["now"])
        try:
            if body["index"] == 137 and failing["on"]:
                others_done.wait(30)
                return Reply(400, {"error": "bad item"})
            time.sleep(0.01)
            return Reply(200, {"done": body["item"]})
        finally:
            with lock:
                answered["now"] -= 1
                answered["n"] += 1
                if answered["n"] == 299:
                    others_done.set()

    agent.responder = responder
    with worker_in_process(threads=2):
        execution_id = _run_graph(automation_id)
        done = ended(execution_id, timeout=60, agent=agent)
        # then the run failed on that item, every other item was called exactly once
        assert done.status == "failed"
        assert done.error.startswith("step each: item 137:"), done.error
        calls = [c for c in agent.calls_for(str(execution_id)) if c.body["step_key"] == "each"]
        indexes = Counter(c.body["index"] for c in calls)
        assert set(indexes) == set(range(300)) and max(indexes.values()) == 1
        # and flow control held over the items: never more than 50 at the agent at once
        assert 1 < answered["most"] <= 50
        assert {c.idempotency_key for c in calls} == {
            f"{execution_id}:each:{i}" for i in range(300)
        }
        assert _latest(execution_id)[("total", None)].status == "cancelled"
        # when the item is fixed and the run retried
        failing["on"] = False
        before = len(agent.calls_for(str(execution_id)))
        execution_service.retry(execution_id, actor=ADMIN)
        again = ended_again(execution_id, agent)
    # then only that item and the step after the fan-out were called again
    assert again.status == "succeeded", again.error
    later = agent.calls_for(str(execution_id))[before:]
    assert sorted((c.body["step_key"], c.body.get("index")) for c in later) == [
        ("each", 137),
        ("total", None),
    ]
    assert later[0].idempotency_key == f"{execution_id}:each:137"
    # and the fan-out's output is every item's output, in order
    assert again.result == {"total": {"count": "300"}}
    rows = _latest(execution_id)
    assert rows[("each", None)].status == "succeeded"
    assert all(rows[("each", i)].status == "succeeded" for i in range(300))


def ended_again(execution_id: uuid.UUID, agent: Any) -> Any:
    wait_for(
        lambda: execution(execution_id).status not in ("failed", "cancelled"),
        timeout=10,
        message="the retry to reopen the run",
    )
    return ended(execution_id, timeout=60, agent=agent)


def test_a_cancel_during_parallel_calls_cuts_them_and_nothing_more_starts(
    db: None, redis_client: Any, agent: Any
) -> None:
    # given three parallel steps held at the agent, and a step after them
    automation_id = make_graph(
        [
            {"key": "a", "message": "a"},
            {"key": "b", "message": "b"},
            {"key": "c", "message": "c"},
            {"key": "d", "needs": ["a", "b", "c"], "message": "d"},
        ],
        agent_url=agent.url,
        step_timeout_s=30,
    )
    release = threading.Event()
    arrived: list[str] = []

    def responder(call: Call) -> Reply:
        arrived.append(call.body["step_key"])
        release.wait(20)
        return Reply(200, {"ok": True})

    agent.responder = responder
    with worker_in_process(threads=2):
        execution_id = _run_graph(automation_id)
        wait_for(lambda: len(arrived) == 3, timeout=20, message="the three calls at the agent")
        # when a person cancels the run
        execution_service.cancel(execution_id, actor=ADMIN)
        # then every call in flight is closed as cancelled at once
        rows = _latest(execution_id)
        assert {rows[(k, None)].status for k in "abc"} == {"cancelled"}
        assert execution(execution_id).status == "cancelled"
        # and, once the worker has dropped them, their late answers change nothing
        release.set()
        time.sleep(1.5)  # the answers' arrival: nothing to wait for but their absence
    assert sorted(arrived) == ["a", "b", "c"]
    rows = _latest(execution_id)
    assert {rows[(k, None)].status for k in "abc"} == {"cancelled"}
    assert ("d", None) not in rows
    assert execution(execution_id).status == "cancelled"


def test_a_step_calls_its_own_agent_with_its_headers_and_retries_alone(
    db: None, redis_client: Any, agent: Any
) -> None:
    from stepwise.demo_agent import AgentServer

    # given a step with its own agent (failing once with a 503), headers and retries, and a
    # step beside it on the automation's agent
    own = AgentServer().start()
    try:
        own.script(Reply(503, {"error": "busy"}))
        automation_id = make_graph(
            [
                {
                    "key": "flaky",
                    "message": "flaky",
                    "agent_url": own.url,
                    "request_headers": {"X-Step": "flaky"},
                    "max_retries": 2,
                    "timeout_s": 7,
                },
                {"key": "steady", "message": "steady"},
            ],
            agent_url=agent.url,
            max_retries=0,
            request_headers=(("X-Step", "automation"),),
        )
        with worker_in_process(threads=2):
            execution_id = _run_graph(automation_id)
            done = ended(execution_id, agent=agent)
        # then the step was called at its own agent with its headers, twice with one key,
        # while the other step was called once at the automation's agent, with its headers
        assert done.status == "succeeded", done.error
        mine = own.calls_for(str(execution_id))
        assert [c.body["step_key"] for c in mine] == ["flaky", "flaky"]
        assert {c.idempotency_key for c in mine} == {f"{execution_id}:flaky"}
        assert {c.headers.get("x-step") for c in mine} == {"flaky"}
        (steady,) = agent.calls_for(str(execution_id))
        assert steady.body["step_key"] == "steady"
        assert steady.headers.get("x-step") == "automation"
        # and each try is a step run of its own
        tries = [r.status for r in step_runs(execution_id) if r.step_key == "flaky"]
        assert tries == ["failed", "succeeded"]
    finally:
        own.stop()


def test_a_worker_killed_in_a_300_item_fan_out_loses_no_item_and_records_none_twice(
    procs: Any, agent: Any
) -> None:
    # given a worker process in the middle of a fan-out over 300 items: the first 150 have
    # answered, the other 150 are held at the agent
    automation_id = make_graph(
        [
            {"key": "list", "message": "list"},
            {
                "key": "each",
                "needs": ["list"],
                "for_each": "steps.list.output.ids",
                "message": "do {{ item }}",
            },
            {"key": "total", "needs": ["each"], "message": "{{ steps.each.output | length }}"},
        ],
        agent_url=agent.url,
        step_timeout_s=120,
        max_retries=2,
    )
    held = threading.Event()
    lock = threading.Lock()
    calls: Counter[str] = Counter()
    waiting = {"n": 0}

    def responder(call: Call) -> Reply:
        body = call.body
        with lock:
            calls[str(call.idempotency_key)] += 1
        if body["step_key"] == "list":
            return Reply(200, {"ids": list(range(300))})
        if body["step_key"] == "each" and body["index"] >= 150 and not held.is_set():
            with lock:
                waiting["n"] += 1
            held.wait(120)
        return Reply(200, {"done": body.get("item"), "message": body["message"]})

    agent.responder = responder
    execution_id = make_execution(automation_id)
    env = {"STEPWISE_WORKER_THREADS": "2", "STEPWISE_LEASE_S": "6"}
    procs.start("worker", **env)
    procs.wait_ready("worker", READY)
    send_run(RunMessage(execution_id, 2))

    def done_items() -> int:
        return sum(
            1 for r in step_runs(execution_id) if r.step_key == "each" and r.status == "succeeded"
        )

    wait_for(
        lambda: waiting["n"] == 150 and done_items() == 150,
        timeout=60,
        message="150 items answered and stored, 150 held at the agent",
    )
    # when it is killed (SIGKILL: no goodbye), the agent lets go, and another worker starts
    procs.signal("worker", signal.SIGKILL)
    held.set()
    procs.stop("worker")
    procs.start("worker", as_name="worker2", **env)
    done = ended(execution_id, timeout=120, agent=agent)
    # then the run succeeded with every item's output, in order
    assert done.status == "succeeded", done.error
    assert done.result == {"total": {"done": None, "message": "300"}}
    # and no item succeeded twice, none is missing
    succeeded = Counter(
        r.item
        for r in step_runs(execution_id)
        if r.step_key == "each" and r.item is not None and r.status == "succeeded"
    )
    assert set(succeeded) == set(range(300)) and set(succeeded.values()) == {1}
    # and the items answered before the kill were not called again; those held at the
    # agent were called again once, with the same key (their lost tries are recorded)
    keys = {f"{execution_id}:each:{i}": i for i in range(300)}
    assert all(calls[k] == 1 for k, i in keys.items() if i < 150)
    assert all(calls[k] == 2 for k, i in keys.items() if i >= 150)
    lost = [
        r
        for r in step_runs(execution_id)
        if r.step_key == "each" and r.item is not None and r.status == "failed"
    ]
    assert len(lost) == 150 and all("stopped" in (r.error or "") for r in lost)
    assert not [r for r in step_runs(execution_id) if r.status == "running"]


def test_sigterm_lets_the_calls_at_the_agent_finish_and_hands_the_graph_run_back(
    procs: Any, agent: Any
) -> None:
    # given a worker process in a fan-out of 6 items, 2 at a time, each 2 s at the agent
    automation_id = make_graph(
        [{"key": "each", "for_each": "input.ids", "message": "do {{ item }}"}],
        agent_url=agent.url,
        concurrency_limit=2,
        step_timeout_s=10,
    )
    arrived: list[int] = []

    def responder(call: Call) -> Reply:
        arrived.append(call.body["index"])
        time.sleep(2)
        return Reply(200, {"done": call.body["item"]})

    agent.responder = responder
    worker = procs.start("worker")
    procs.wait_ready("worker", READY)
    execution_id = make_execution(automation_id, input={"ids": list(range(6))})
    send_run(RunMessage(execution_id, 3))
    wait_for(lambda: len(arrived) == 2, message="two items at the agent")
    # when the worker is told to stop while they are at the agent
    procs.signal("worker", signal.SIGTERM)  # to the process group, as honcho sends it
    wait_for(lambda: not group_alive(worker.pid), timeout=35, message="the worker to exit")
    log = procs.log("worker")
    # (A worker process killed would log "Killing worker process"; the metrics' fork
    # process may log "Killing fork process" when the group's SIGTERM and the one Dramatiq
    # forwards reach it before it exits: it serves only /metrics, and dies either way.)
    assert "Worker has been shut down" in log and "Killing worker" not in log, log[-3000:]
    # then those two finished and were stored, no other item started, the run is queued
    items = {(r.item, r.status) for r in step_runs(execution_id) if r.item is not None}
    first = set(arrived)
    assert items == {(i, "succeeded") for i in first}
    handed_back = execution(execution_id)
    assert handed_back.status == "queued" and handed_back.lease_expires_at is None
    # when a worker comes back, the run resumes with the other four items only
    procs.start("worker", as_name="worker2")
    done = ended(execution_id, timeout=60, agent=agent)
    assert done.status == "succeeded", done.error
    assert sorted(arrived) == list(range(6))
    assert done.result == {"each": [{"done": i} for i in range(6)]}
