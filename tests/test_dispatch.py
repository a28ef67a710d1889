"""Set-based dispatch with pipelined sends: each run enqueued once, with its delay.

On the real PostgreSQL and Redis: the batch sender (`tasks.send.send_runs`, one
Redis round trip per chunk) stores the same messages `send_run` does, a worker
consumes them as usual, and dispatchers running side by side still send every
slot's run exactly once.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import dramatiq
import pytest
from dramatiq.middleware import MiddlewareError
from dramatiq.worker import ConsumerThread
from sqlalchemy import select

from core.settings import get_settings
from db.dispatch import SlotTally
from db.models import Execution, Schedule
from db.runs import START_AHEAD_MS, RunMessage
from db.session import db_now, session_scope
from tasks import periodic
from tasks.broker import (
    HOP_CHUNK,
    HOP_WRITTEN_FOR,
    build_broker,
    enqueue_many,
    hop_due_messages,
    hop_in_batches,
)
from tasks.send import send_run, send_runs
from testkit.factories import fetch, make_automation, make_schedule
from testkit.prometheus import metric
from testkit.waiting import wait_for

QUEUES = ("default", "default.DQ")


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Dispatch in batches of 4, so a handful of schedules spans several transactions."""
    monkeypatch.setenv("STEPWISE_DISPATCH_BATCH", "4")
    get_settings.cache_clear()
    yield 4
    monkeypatch.delenv("STEPWISE_DISPATCH_BATCH")
    get_settings.cache_clear()


@pytest.fixture
def three_lanes(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A tick runs three dispatch transactions side by side."""
    monkeypatch.setenv("STEPWISE_DISPATCH_LANES", "3")
    get_settings.cache_clear()
    yield 3
    monkeypatch.delenv("STEPWISE_DISPATCH_LANES")
    get_settings.cache_clear()


def stored_messages(redis_client: Any) -> list[dict[str, Any]]:
    """Every run message in Redis, ready or delayed, as Dramatiq encoded it."""
    return [
        json.loads(data)
        for queue in QUEUES
        for data in redis_client.hgetall(f"dramatiq:{queue}.msgs").values()
    ]


def due_schedules(count: int, agent_url: str, *, first_in_s: float) -> list[uuid.UUID]:
    """`count` one-off schedules due 0.5 s apart from `first_in_s` on."""
    automation_id = make_automation(agent_url=agent_url, steps=1)
    with session_scope() as session:
        now = db_now(session)
    return [
        make_schedule(
            automation_id, kind="once", run_at=now + timedelta(seconds=first_in_s + n / 2)
        )
        for n in range(count)
    ]


def executions() -> dict[str, Execution]:
    with session_scope() as session:
        rows = session.scalars(select(Execution)).all()
        session.expunge_all()
        return {str(r.id): r for r in rows}


def test_a_batch_send_stores_the_message_a_single_send_stores(db: None, redis_client: Any) -> None:
    # given the same run sent once on its own and once through the batch sender
    run_id = uuid.uuid4()
    message = RunMessage(run_id, max_retries=5, retries=2, delay_ms=60_000)
    send_run(message)
    send_runs([message])
    # then Redis holds two messages that differ only in their ids and times
    first, second = stored_messages(redis_client)
    for stored in (first, second):
        assert stored["queue_name"] == "default.DQ"
        assert stored["actor_name"] == "run_execution"
        assert stored["args"] == [str(run_id)]
        assert stored["options"]["max_retries"] == 5
        assert stored["options"]["retries"] == 2
    varying = {"message_id", "message_timestamp"}
    assert {k: v for k, v in first.items() if k not in varying | {"options"}} == {
        k: v for k, v in second.items() if k not in varying | {"options"}
    }
    assert first["options"].keys() == second["options"].keys()
    assert abs(first["options"]["eta"] - second["options"]["eta"]) < 5_000
    assert first["options"]["redis_message_id"] != second["options"]["redis_message_id"]


class Hooks(dramatiq.Middleware):
    """Records what a middleware acting on enqueues sees; refuses a message named `refused`."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int | None]] = []

    def before_enqueue(self, broker: Any, message: Any, delay: int | None) -> None:
        if message.args == ("refused",):
            raise MiddlewareError("refused")
        self.seen.append(("before", message.queue_name, delay))

    def after_enqueue(self, broker: Any, message: Any, delay: int | None) -> None:
        self.seen.append(("after", message.queue_name, delay))


def test_a_middleware_acting_on_enqueues_sees_each_batch_message_as_a_single_send_shows_it(
    redis_client: Any,
) -> None:
    # given a broker with a middleware that acts on enqueues
    hooks = Hooks()
    broker = build_broker(get_settings())
    broker.add_middleware(hooks)

    def message(arg: str) -> Any:
        return dramatiq.Message(
            queue_name="default", actor_name="run_execution", args=(arg,), kwargs={}, options={}
        )

    # when two messages go through the batch sender, one delayed
    assert enqueue_many(broker, [(message("a"), None), (message("b"), 5000)]) == 2
    # then it saw each before and after it was stored, on the queue it went to
    assert hooks.seen == [
        ("before", "default", None),
        ("before", "default.DQ", 5000),
        ("after", "default", None),
        ("after", "default.DQ", 5000),
    ]
    # and a message it refuses stops the batch, as it stops a single send
    with pytest.raises(MiddlewareError):
        enqueue_many(broker, [(message("refused"), None)])
    assert len(stored_messages(redis_client)) == 2
    broker.close()


def test_pipelined_dispatch_enqueues_each_run_once_with_its_delay(
    db: None, redis_client: Any, small_batches: int
) -> None:
    # given 10 schedules due over the next 5-10 s (3 batches of 4)
    due_schedules(10, "http://127.0.0.1:9/agent", first_in_s=5)
    # when dispatch runs with the batch sender, twice
    sent = periodic.dispatch_due(send_run, send_many=send_runs)
    again = periodic.dispatch_due(send_run, send_many=send_runs)
    # then each execution has exactly one delayed message, delivered a little ahead
    # of its slot and carrying the slot for the worker to start it at
    assert (sent, again) == (10, 0)
    stored = stored_messages(redis_client)
    runs = executions()
    assert sorted(m["args"][0] for m in stored) == sorted(runs)
    for message in stored:
        run = runs[message["args"][0]]
        assert run.available_at is not None and run.available_at == run.scheduled_for
        assert message["queue_name"] == "default.DQ"
        start_at = message["options"]["start_at"]
        assert abs(start_at / 1000 - run.scheduled_for.timestamp()) < 0.5
        assert message["options"]["eta"] == pytest.approx(start_at - START_AHEAD_MS, abs=100)


def test_dispatchers_side_by_side_send_each_slot_once(
    db: None, redis_client: Any, small_batches: int
) -> None:
    # given 24 due schedules and three dispatchers starting at the same time
    due_schedules(24, "http://127.0.0.1:9/agent", first_in_s=5)
    counts: list[int] = []
    start = threading.Barrier(3)

    def dispatcher() -> None:
        start.wait()
        counts.append(periodic.dispatch_due(send_run, send_many=send_runs))

    threads = [threading.Thread(target=dispatcher) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # then the slots were shared, none twice
    assert sum(counts) == 24
    sent = Counter(m["args"][0] for m in stored_messages(redis_client))
    assert len(sent) == 24 and set(sent.values()) == {1}
    assert set(sent) == set(executions())


def test_lanes_of_one_tick_and_of_ticks_side_by_side_leave_no_slot_undone_or_doubled(
    db: None, redis_client: Any, small_batches: int, three_lanes: int
) -> None:
    # given 60 due schedules (15 batches of 4) and two ticks at once, each in 3 lanes
    ids = due_schedules(60, "http://127.0.0.1:9/agent", first_in_s=5)
    tallies = [SlotTally(), SlotTally()]
    counts: list[int] = []
    start = threading.Barrier(2)

    def tick(tally: SlotTally) -> None:
        start.wait()
        counts.append(periodic.dispatch_due(send_run, send_many=send_runs, tally=tally))

    threads = [threading.Thread(target=tick, args=(t,)) for t in tallies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # then each slot has one execution and one message, counted once by one lane
    assert sum(counts) == 60
    assert sum(t.dispatched for t in tallies) == 60
    sent = Counter(m["args"][0] for m in stored_messages(redis_client))
    assert len(sent) == 60 and set(sent.values()) == {1}
    assert set(sent) == set(executions())
    # and every schedule moved on: nothing is left due
    schedules = [fetch(Schedule, i) for i in ids]
    assert all(s.dispatched_count == 1 and s.next_run_at is None for s in schedules)
    assert periodic.dispatch_due(send_run, send_many=send_runs) == 0


def test_a_failed_send_ends_the_tick_and_leaves_the_committed_runs_to_housekeeping(
    db: None, redis_client: Any, small_batches: int, three_lanes: int
) -> None:
    # given 60 due schedules and a Redis that refuses the first batch of messages
    due_schedules(60, "http://127.0.0.1:9/agent", first_in_s=5)

    def refuse(messages: Any) -> None:
        raise ConnectionError("redis went away")

    # when a tick dispatches in three lanes
    with pytest.raises(ConnectionError, match="redis went away"):
        periodic.dispatch_due(send_run, send_many=refuse)
    # then the lanes stopped: some schedules are still due for the next tick, and each
    # committed slot is a queued execution without a message, which housekeeping re-sends
    runs = executions()
    assert 0 < len(runs) < 60
    assert {r.status for r in runs.values()} == {"queued"}
    assert stored_messages(redis_client) == []
    assert periodic.dispatch_due(send_run, send_many=send_runs) == 60 - len(runs)


def test_a_worker_runs_pipelined_runs_once_each_at_their_slot(
    worker: Any, agent: Any, small_batches: int
) -> None:
    # given 6 schedules that came due in the last few seconds (the in-process worker
    # consumes the run queue, not the delay queue)
    due_schedules(6, agent.url, first_in_s=0.5)
    time.sleep(3.5)
    # when they are dispatched through the batch sender and the worker consumes them
    assert periodic.dispatch_due(send_run, send_many=send_runs) == 6

    def all_succeeded() -> bool:
        return [r.status for r in executions().values()] == ["succeeded"] * 6

    wait_for(
        all_succeeded,
        timeout=30,
        message="six pipelined runs",
        details=lambda: str([(r.status, r.error) for r in executions().values()]),
    )
    # then the agent saw each run's step once, never before its slot
    for run_id, run in executions().items():
        calls = agent.calls_for(run_id)
        assert len(calls) == 1
        assert run.started_at is not None and run.started_at >= run.scheduled_for
    time.sleep(0.5)
    assert sum(len(agent.calls_for(i)) for i in executions()) == 6


def test_a_slot_that_already_has_its_execution_is_neither_sent_nor_counted(
    db: None, redis_client: Any, small_batches: int
) -> None:
    # given 5 due schedules, one of whose slots another dispatcher already inserted
    ids = due_schedules(5, "http://127.0.0.1:9/agent", first_in_s=5)
    taken = fetch(Schedule, ids[2])
    assert taken.run_at is not None
    with session_scope() as session:
        session.add(
            Execution(
                automation_id=taken.automation_id,
                workspace_id=taken.workspace_id,
                schedule_id=taken.id,
                scheduled_for=taken.run_at,
                total_steps=1,
            )
        )
    # when dispatch runs
    sent = periodic.dispatch_due(send_run, send_many=send_runs)
    # then only the four new executions are sent, and only they count as dispatched
    assert sent == 4
    assert len(stored_messages(redis_client)) == 4
    schedules = [fetch(Schedule, i) for i in ids]
    assert [s.dispatched_count for s in schedules] == [1, 1, 0, 1, 1]
    assert all(s.next_run_at is None and not s.enabled for s in schedules)


def test_runs_over_the_workspace_quota_are_recorded_skipped_with_the_reason(
    db: None, redis_client: Any
) -> None:
    from db.workspaces import Quotas, set_quotas
    from testkit.factories import ADMIN

    # given a workspace allowed 3 runs a minute, and 5 one-off schedules due together
    with session_scope() as session:
        set_quotas(session, Quotas(200, 1000, 3), actor=ADMIN)
    ids = due_schedules(5, "http://127.0.0.1:9/agent", first_in_s=5)
    slots = "stepwise_dispatch_slots_total"
    before = {o: metric(slots, outcome=o) for o in ("dispatched", "skipped")}
    # when the dispatch tick runs
    sent = periodic.tick_dispatch(send_run, send_many=send_runs)
    # then the 3 earliest slots are sent, and the 2 others are rows that say why
    assert sent == 3
    assert metric(slots, outcome="dispatched") == before["dispatched"] + 3
    assert metric(slots, outcome="skipped") == before["skipped"] + 2
    runs = sorted(executions().values(), key=lambda e: e.scheduled_for)
    assert [r.status for r in runs] == ["queued"] * 3 + ["skipped"] * 2
    assert {r.error for r in runs[3:]} == {
        "skipped: the workspace reached its quota of 3 runs a minute "
        "(an admin can raise it on the Workspace page)"
    }
    # and they count as missed on their schedules; nothing is left to dispatch
    missed = {i: fetch(Schedule, i).missed_count for i in ids}
    assert sorted(missed.values()) == [0, 0, 0, 1, 1]
    assert periodic.dispatch_due(send_run, send_many=send_runs) == 0


def test_delayed_messages_come_due_together_and_each_is_processed_once(
    redis_client: Any,
) -> None:
    # given a worker whose delay-queue consumers move due messages in batches (as the
    # Procfile's workers do: `tasks.lifecycle.install`), with a recording actor
    hop_in_batches()
    assert ConsumerThread.handle_delayed_messages is hop_due_messages
    # (written against one Dramatiq: on an upgrade, read its handle_delayed_messages again)
    assert dramatiq.__version__ == HOP_WRITTEN_FOR
    broker = build_broker(get_settings())
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def record(tag: str) -> None:
        with lock:
            seen[tag] += 1

    dramatiq.actor(record, broker=broker, queue_name="hops", actor_name="hops_record")
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    worker.start()
    try:
        # when more messages than one batch moves are sent for the same instant, 0.5 s ahead
        count = HOP_CHUNK + 200
        tags = [f"m{i}" for i in range(count)]
        message = dramatiq.Message(
            queue_name="hops", actor_name="hops_record", args=(), kwargs={}, options={}
        )
        assert enqueue_many(broker, [(message.copy(args=(t,)), 500) for t in tags]) == count
        assert redis_client.hlen("dramatiq:hops.DQ.msgs") == count
        # then each is processed exactly once
        wait_for(lambda: sum(seen.values()) >= count, timeout=30, message="all processed")
        worker.join()
        assert seen == Counter(tags)
        # and nothing is left behind: every delayed message was acknowledged, every
        # moved one too
        for queue in ("hops.DQ", "hops"):
            wait_for(
                lambda queue=queue: redis_client.hlen(f"dramatiq:{queue}.msgs") == 0,
                timeout=10,
                message=f"{queue} emptied",
            )
        assert redis_client.llen("dramatiq:hops.DQ") == 0
    finally:
        worker.stop()
        broker.close()
