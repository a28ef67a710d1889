"""A graph run held by a worker: its steps run as soon as their needs have ended, side by side.

A claim whose automation's steps have keys (`core.graph.is_graph`) is flown here; a chain
(today's linear automation) is flown by `tasks/flight.py`, unchanged. One coordinator per
run owns the run's state: it rebuilds where each step stands from the run's step runs at
the claim (the latest row of each step key and item), asks `core.graph.plan` what to do,
and applies it whole in one fenced group-commit write (skips, cancels, failures before any
call, a fan-out's own row, the answers received meanwhile); then it starts every call the
plan allows, each its own asyncio task, and waits for one to end. Only the coordinator
changes the run's state, so two branches never race on it; the run ends once, when the
plan gives its status and no call is in flight.

Each call task waits for the automation's flow control, records its start (fenced, in one
statement with the other starts of the moment), calls the agent with the step's own
settings (agent URL, timeout, headers; the automation's where the step has none) and
`Idempotency-Key: <execution_id>:<step_key>[:<index>]` (`core.graph.call_key`), and retries
a retryable failure after a backoff up to the step's `max_retries`, storing each try.

Templates (`when`, `for_each`, message, input) are evaluated on a small pool of threads,
never on the event loop: each has a deadline of `MAX_RENDER_S`. A template that cannot be
evaluated fails its step at once, with the template's error and no retry.

Failure semantics are `core.graph`'s: a step that fails for good fails the run; calls not
at the agent yet (waiting for flow control or a retry's backoff) and steps not started are
cancelled, with the reason; calls at the agent finish and their answers are kept; waits
(below) are cancelled. A lost lease, a cancel by a person and a stopping worker cut or hand
back every call at once.

**Waits** (docs/RELIABILITY.md, "Waits"). A sleep or an approval starts as a `waiting` row
written in the coordinator's fenced write (no call task); an async step is a call whose
agent's `202` makes its row `waiting` (its body carries `callback_url`, never stored). While
calls are in flight, the coordinator reads its waiting rows every `WAIT_POLL_S` and takes in
those resolved (a callback, a decision) or past their `wait_until` (ended by their kind's
rule, in a fenced write conditional on the row still waiting). When nothing is in flight,
nothing can start and a step waits, the run is **parked** (`db.runs.park`: the run's row
locked first, the waits read after the lock): `waiting`, no lease, `available_at` at its
earliest wait's end, a wake-up message delayed to it; the coordinator returns, holding no
thread, slot, lease or connection. The wake's claim keeps the attempt (`db.claims`), and
`rebuild` reads the resolved waits as ended steps. After a park the coordinator writes
nothing, not even a retry of a park whose commit went unacknowledged: then the lease
expires and recovery takes the run over with a new attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy.exc import OperationalError

from core import logs
from core.errors import ValidationFailed
from core.graph import (
    Call,
    Graph,
    GraphStep,
    StepProgress,
    call_key,
    fan_out_state,
    graph_of,
    items_of,
    plan,
    render_call,
    sleep_end,
    variables,
)
from core.limits import MAX_WAIT_S, WAIT_POLL_S
from core.outcome import StepOutcome, parse_output, stored_request
from core.secrets import SecretUnreadable
from core.templates import TemplateError
from core.vocabulary import (
    ExecutionStatus,
    FailureReport,
    OnReject,
    OnTimeout,
    Role,
    StepKind,
    StepState,
    StepStatus,
)
from core.waits import callback_url
from db import runs
from db.runs import Accepted, RunMessage, StepClose, StepMark, WaitEnd
from db.secrets import resolve_call_headers
from db.session import session_scope
from tasks import metrics
from tasks.agent import call_agent
from tasks.commits import Answer
from tasks.flight import BUSY_POLL_MS, Flight, Pilot, redacted
from tasks.flow import BUSY, rate_window
from tasks.signals import shutting_down

log = logging.getLogger(__name__)
TEMPLATE_THREADS = 2
STOP_POLL_S = 0.5  # how often a run waiting for its calls looks whether the worker stops
HANDED_BACK = "handed back: the worker stopped; resuming elsewhere"
ASYNC_WAIT = {"kind": str(StepKind.ASYNC), "progress": None, "note": None, "progress_at": None}
# The callback URL's token outlives the step's wait_until by this much: the row's
# wait_until, on the database's clock, decides (`db.waits`), never the worker's clock.
CALLBACK_SLACK_S = 300
_NOT_STORED = "steps"  # the outputs of a step's needs: sent with each call, not stored


# --- where a run stands ----------------------------------------------------------------------


@dataclass
class _Step:
    """One step of the run, as the coordinator knows it."""

    state: StepState = StepState.PENDING
    output: Any = None
    reason: str | None = None
    items: list[Any] | None = None  # a fan-out's list, once known
    item_states: list[StepState] = field(default_factory=list)
    item_outputs: list[Any] = field(default_factory=list)
    own_row: int | None = None  # a fan-out's own step run in this claim
    wait_row: int | None = None  # its step run while it waits (state WAITING)

    def progress(self, waiting: set[int]) -> StepProgress:
        """As `core.graph` reads it; `waiting`: items whose calls wait to start (pending)."""
        items = tuple(
            StepState.PENDING if i in waiting and s is StepState.RUNNING else s
            for i, s in enumerate(self.item_states)
        )
        return StepProgress(self.state, self.output, self.reason, items)


def rebuild(graph: Graph, rows: Sequence[Any]) -> dict[str, _Step]:
    """Where each step stands from a run's step runs (oldest first): a step whose latest row
    succeeded or was skipped keeps that; one whose latest row waits is waiting (past its
    wait_until too: the coordinator ends it by its kind's rule, in a fenced write); a wait
    that failed since the run last started (a callback's error, a rejection, a timeout) is
    failed; any other is pending again (a retry, or a claim after a lost worker, runs it
    again). A fan-out whose list is known keeps it and the outputs of its items that
    succeeded; only the others run again."""
    latest: dict[tuple[str, int | None], Any] = {}
    known: dict[str, list[Any]] = {}
    for row in rows:
        latest[(row.step_key, row.item)] = row
        if row.item is None and isinstance(row.items, list):
            known[row.step_key] = row.items
    found: dict[str, _Step] = {}
    for step in graph.steps:
        mine = found[step.key] = _Step()
        top = latest.get((step.key, None))
        if top is not None and top.status == StepStatus.SUCCEEDED:
            mine.state, mine.output = StepState.SUCCEEDED, _output(top.response_body)
        elif top is not None and top.status == StepStatus.SKIPPED:
            mine.state, mine.reason = StepState.SKIPPED, top.error
        elif top is not None and top.status == StepStatus.WAITING:
            mine.state, mine.wait_row = StepState.WAITING, top.id
        elif top is not None and top.status == StepStatus.FAILED and getattr(top, "lately", None):
            mine.state, mine.reason = StepState.FAILED, top.error
        elif step.for_each is not None and step.key in known:
            mine.items = known[step.key]
            for index in range(len(mine.items)):
                row = latest.get((step.key, index))
                done = row is not None and row.status == StepStatus.SUCCEEDED
                mine.item_states.append(StepState.SUCCEEDED if done else StepState.PENDING)
                mine.item_outputs.append(_output(row.response_body) if row and done else None)
    return found


def _output(body: str | None) -> Any:
    return parse_output(body or "", truncated=False)


def sinks(graph: Graph) -> list[str]:
    """The keys of the steps no step waits for: their outputs are the run's result."""
    waited = {key for step in graph.steps for key in step.waits_for}
    return [step.key for step in graph.steps if step.key not in waited]


# --- what to do next (on the template threads) -----------------------------------------------


@dataclass
class _Start:
    """A step to start: its calls rendered (one per item of a fan-out still to run)."""

    key: str
    calls: list[tuple[int | None, Call]]
    needs: dict[str, Any]  # {key: {"output": ...}} of its needs
    items: list[Any] | None = None  # a fan-out's list
    # A sleep or an approval: what its row records, and until when (an instant, or seconds
    # from the database's now).
    wait: dict[str, Any] | None = None
    wait_until: datetime | None = None
    wait_s: float | None = None


@dataclass
class _Decision:
    starts: list[_Start] = field(default_factory=list)
    skip: dict[str, str] = field(default_factory=dict)
    fail: dict[str, str] = field(default_factory=dict)
    cancel: dict[str, str] = field(default_factory=dict)
    status: ExecutionStatus | None = None


def decide(
    graph: Graph,
    progress: Mapping[str, StepProgress],
    known: Mapping[str, tuple[list[Any], list[StepState]]],
    run_input: Any,
) -> _Decision:
    """`core.graph.plan` and the rendering of every call it starts: pure, and bounded in time
    by the templates' own deadlines. `known`: fan-outs whose list an earlier attempt fixed,
    with their items' states (those that succeeded are not called again). A step whose
    `for_each`, message or input cannot be evaluated fails."""
    decided = plan(graph, progress, run_input)
    found = _Decision(
        skip=dict(decided.skip),
        fail=dict(decided.fail),
        cancel=dict(decided.cancel),
        status=decided.status,
    )
    for key in decided.start:
        step = graph.by_key[key]
        try:
            found.starts.append(_rendered(step, progress, known.get(key), run_input))
        except TemplateError as exc:
            found.fail[key] = str(exc)
    if found.fail and found.starts:  # nothing starts once a step failed (`plan`)
        for start in found.starts:
            found.cancel[start.key] = f"not started: step {next(iter(found.fail))} failed"
        found.starts = []
    return found


def _rendered(
    step: GraphStep,
    progress: Mapping[str, StepProgress],
    known: tuple[list[Any], list[StepState]] | None,
    run_input: Any,
) -> _Start:
    needs = variables(step, run_input, progress)["steps"]
    if step.kind is StepKind.SLEEP:
        if step.sleep_s is not None:
            return _Start(step.key, [], needs, wait={"kind": str(step.kind)}, wait_s=step.sleep_s)
        until = sleep_end(step, run_input, progress)
        if (until - datetime.now(UTC)).total_seconds() > MAX_WAIT_S:
            raise TemplateError(
                f"The sleep_until of step {step.key} is {until.isoformat()}, more than "
                f"{MAX_WAIT_S // 86400} days ahead (a sleep lasts at most {MAX_WAIT_S} seconds)"
            )
        return _Start(step.key, [], needs, wait={"kind": str(step.kind)}, wait_until=until)
    if step.kind is StepKind.APPROVAL:
        message = render_call(step, run_input, progress).message
        wait = {
            "kind": str(step.kind),
            "role": str(step.approvers or Role.EDITOR),
            "on_reject": str(step.on_reject or OnReject.FAIL),
            "on_timeout": str(step.on_timeout or OnTimeout.REJECT),
            "message": message,
        }
        return _Start(step.key, [], needs, wait=wait, wait_s=step.wait_s(0))
    if step.for_each is None:
        return _Start(step.key, [(None, render_call(step, run_input, progress))], needs)
    if known is not None:
        items, states = known
    else:
        items = items_of(step, run_input, progress)
        states = [StepState.PENDING] * len(items)
    calls: list[tuple[int | None, Call]] = [
        (i, render_call(step, run_input, progress, item=item, index=i))
        for i, item in enumerate(items)
        if states[i] is not StepState.SUCCEEDED
    ]
    return _Start(step.key, calls, needs, items)


# --- the run in flight -----------------------------------------------------------------------

WAITING, STARTING, CALLING = "waiting", "starting", "calling"


@dataclass(eq=False)
class _Call:
    """One call of a step (of one item of a fan-out) in flight in this claim."""

    key: str
    item: int | None
    rendered: Call
    needs: dict[str, Any]
    phase: str = WAITING  # waiting for flow control or a retry's backoff; then at the agent
    task: asyncio.Task[None] | None = None


@dataclass
class _Run:
    flight: Flight
    graph: Graph
    steps: dict[str, _Step]
    numbers: dict[str, int]
    events: asyncio.Queue[tuple[_Call, Answer | None]] = field(default_factory=asyncio.Queue)
    calls: set[_Call] = field(default_factory=set)
    answers: list[tuple[int, StepOutcome]] = field(default_factory=list)  # to store
    marks: list[StepMark] = field(default_factory=list)
    closes: list[StepClose] = field(default_factory=list)
    accepted: list[Accepted] = field(default_factory=list)  # async calls answered 202
    failure: tuple[str, str, bool] | None = None  # (key, error, retryable) of the first
    headers: dict[str, asyncio.Future[tuple[dict[str, str], list[str]]]] = field(
        default_factory=dict
    )
    called: bool = False
    waits_cancelled: bool = False  # since the last plan: the plan has more to say
    # A run never has more calls at once than its automation's concurrency limit, nor more
    # calls asking Redis for a permit than its rate allows in a window: the others wait
    # here, on the loop, without asking (a fan-out of 1,000 items does not poll 1,000 times).
    slots: asyncio.Semaphore | contextlib.nullcontext[None] = field(
        default_factory=contextlib.nullcontext
    )
    pollers: asyncio.Semaphore | contextlib.nullcontext[None] = field(
        default_factory=contextlib.nullcontext
    )  # a call of this claim reached the agent

    def waiting(self, key: str) -> set[int]:
        return {
            c.item for c in self.calls if c.key == key and c.phase == WAITING and c.item is not None
        }

    def progress(self) -> dict[str, StepProgress]:
        return {key: step.progress(self.waiting(key)) for key, step in self.steps.items()}

    def known(self) -> dict[str, tuple[list[Any], list[StepState]]]:
        return {
            key: (step.items, list(step.item_states))
            for key, step in self.steps.items()
            if step.items is not None and step.state is StepState.PENDING
        }

    def mark(
        self,
        key: str,
        status: StepStatus,
        error: str | None,
        item: int | None = None,
        **more: Any,
    ) -> None:
        self.marks.append(StepMark(self.numbers[key], key, status, error, item, **more))

    def waits(self) -> dict[int, str]:
        """The rows of the steps that wait, and their keys."""
        return {
            step.wait_row: key
            for key, step in self.steps.items()
            if step.state is StepState.WAITING and step.wait_row is not None
        }


class GraphPilot(Pilot):
    """Flies graph runs on the runner's loop, with the chain pilot's writes, flow control,
    retries and ends."""

    def __init__(self, **pilot: Any) -> None:
        super().__init__(**pilot)
        self.templates = ThreadPoolExecutor(TEMPLATE_THREADS, thread_name_prefix="stepwise-tpl")

    async def fly(self, flight: Flight) -> None:
        """Run `flight`'s graph from where its step runs say it stands to its end, or until
        it is lost or handed back."""
        claim = flight.claim
        logs.bind_run(
            execution_id=claim.execution_id,
            automation_id=claim.automation_id,
            workspace_id=claim.workspace_id,
            attempt=claim.attempt,
        )
        run: _Run | None = None
        try:
            graph = graph_of(claim.steps)
            if flight.start_at is not None:
                await asyncio.sleep(max(0.0, flight.start_at - time.time()))
            rows = await self._db(partial(_graph_rows, claim.execution_id))
            numbers = {step.key: n for n, step in enumerate(graph.steps, start=1)}
            run = _Run(flight, graph, rebuild(graph, rows), numbers)
            for key, step in run.steps.items():  # a wait that failed while the run was parked
                if step.state is StepState.FAILED and run.failure is None:
                    run.failure = (key, step.reason or "failed", False)
            if claim.concurrency_limit is not None:
                run.slots = asyncio.Semaphore(claim.concurrency_limit)
            if claim.rate_limit_per_s is not None:
                run.pollers = asyncio.Semaphore(rate_window(claim.rate_limit_per_s)[0])
            await self._drive(run)
        except asyncio.CancelledError:
            log.info("dropped execution %s: its lease was lost", claim.execution_id)
            if run is not None:
                _cut(run)
            raise
        except ValidationFailed as exc:  # stored steps no save would have let through
            await self._end(claim, None, ExecutionStatus.FAILED, error=f"steps: {exc}")
        except Exception as exc:
            log.exception("execution %s interrupted", claim.execution_id)
            if run is not None:
                _cut(run)
            await self._interrupted(flight, None, exc)

    async def _drive(self, run: _Run) -> None:
        claim = run.flight.claim
        stopping = False
        while True:
            if shutting_down.is_set() and not stopping:
                stopping = True
                self._cancel_waiting(run, None)
            decision = await asyncio.get_running_loop().run_in_executor(
                self.templates,
                partial(decide, run.graph, run.progress(), run.known(), claim.input),
            )
            startable = bool(decision.starts)
            if stopping:  # what has ended is recorded; nothing starts
                decision.starts = []
            self._apply(run, decision)
            made = await self._record(run)
            if made is None:
                _cut(run)
                return  # cancelled, or taken over
            for start in decision.starts:
                self._start(run, start, made)
            if not run.calls:
                if decision.status is not None:
                    await self._finish(run, decision.status)
                    return
                moved = bool(decision.starts or decision.skip or decision.fail or decision.cancel)
                moved, run.waits_cancelled = moved or run.waits_cancelled, False
                if stopping and (startable or not run.waits()):
                    await self._hand_back(run)
                    return
                if moved and not stopping:
                    continue
                if run.waits():  # only waits are open: no worker holds the run until they end
                    if await self._park(run):
                        continue
                    return  # parked, or no longer ours
                raise RuntimeError(f"graph run {claim.execution_id} stands still")
            # The heartbeat drops a lost run only while it waits (not in the middle of a
            # write), and then cuts every call of it at once, at the agent or not.
            run.flight.calling = True
            kept = await self._wait(run)
            run.flight.calling = False
            if not kept:
                await self._record(run)  # the answers received: stored while their rows run
                _cut(run)
                return

    def _apply(self, run: _Run, decision: _Decision) -> None:
        """The plan's skips, failures and cancels, recorded with their reasons."""
        for key, reason in decision.skip.items():
            run.steps[key].state, run.steps[key].reason = StepState.SKIPPED, reason
            run.mark(key, StepStatus.SKIPPED, reason)
        for key, reason in decision.fail.items():
            run.steps[key].state, run.steps[key].reason = StepState.FAILED, reason
            run.mark(key, StepStatus.FAILED, reason)
            if run.failure is None:
                run.failure = (key, reason, False)
        for key, reason in decision.cancel.items():
            run.steps[key].state, run.steps[key].reason = StepState.CANCELLED, reason
            run.mark(key, StepStatus.CANCELLED, reason)
        if run.failure is not None:
            self._cancel_waiting(run, f"not started: step {run.failure[0]} failed")
        for start in decision.starts:
            step = run.steps[start.key]
            step.state = StepState.RUNNING
            if start.wait is not None:  # a sleep or an approval: its row waits, no call
                step.state = StepState.WAITING
                run.mark(
                    start.key,
                    StepStatus.WAITING,
                    None,
                    wait=start.wait,
                    wait_until=start.wait_until,
                    wait_s=start.wait_s,
                )
                continue
            if start.items is not None:
                if step.items is None:
                    step.items = start.items
                    step.item_states = [StepState.PENDING] * len(start.items)
                    step.item_outputs = [None] * len(start.items)
                for index, _ in start.calls:
                    step.item_states[index or 0] = StepState.RUNNING
                listed = {"items": start.items}
                if start.calls:
                    run.mark(start.key, StepStatus.RUNNING, None, request=listed)
                else:  # an empty list, or every item done before: done at once
                    step.state, step.output = StepState.SUCCEEDED, list(step.item_outputs)
                    body = json.dumps(step.output)
                    run.mark(start.key, StepStatus.SUCCEEDED, None, request=listed, body=body)

    def _start(self, run: _Run, start: _Start, made: Mapping[tuple[str, int | None], int]) -> None:
        step = run.steps[start.key]
        if start.wait is not None:
            step.wait_row = made[(start.key, None)]
            return
        if start.items is not None:
            step.own_row = made.get((start.key, None))
        for index, rendered in start.calls:
            call = _Call(start.key, index, rendered, start.needs)
            call.task = asyncio.create_task(self._call(run, call))
            run.calls.add(call)

    async def _record(self, run: _Run) -> dict[tuple[str, int | None], int] | None:
        """Everything the run's state gained since the last write, in one fenced write."""
        claim = run.flight.claim
        answers, marks, closes, accepted = run.answers, run.marks, run.closes, run.accepted
        run.answers, run.marks, run.closes, run.accepted = [], [], [], []
        if not (answers or marks or closes or accepted):
            return {}
        record = partial(
            runs.record_graph,
            claim=claim,
            lease_s=self.lease_s,
            answers=answers,
            marks=marks,
            closes=closes,
            accepted=accepted,
        )
        return await self._write(claim, None, record)

    async def _wait(self, run: _Run) -> bool:
        """Wait for a call to end and take in every call ended by then, or (some step
        waits) for a wait to be resolved or to pass its end, read every WAIT_POLL_S; False
        if the run is no longer this claim's."""
        polled = time.monotonic()
        while True:
            try:
                first = await asyncio.wait_for(run.events.get(), min(STOP_POLL_S, WAIT_POLL_S))
                break
            except TimeoutError:
                if shutting_down.is_set():
                    return True
                waits = run.waits()
                if waits and time.monotonic() - polled >= WAIT_POLL_S:
                    polled = time.monotonic()
                    moved = await self._db(partial(_moved_waits, list(waits)))
                    if moved:
                        return await self._take_in(run, moved)
        ended = [first]
        while not run.events.empty():
            ended.append(run.events.get_nowait())
        lost = False
        for call, answer in ended:
            run.calls.discard(call)
            if answer is None:
                lost = True
                continue
            self._ended(run, call, answer)
        return not lost

    def _ended(self, run: _Run, call: _Call, answer: Answer) -> None:
        """A call's last answer: its step (or item) succeeded or failed for good, or (an
        async step's agent answered 202) its step waits for the callback."""
        outcome = answer.outcome
        step = run.steps[call.key]
        graph_step = run.graph.by_key[call.key]
        if graph_step.kind is StepKind.ASYNC and outcome.ok and outcome.status == 202:
            wait_s = graph_step.wait_s(run.flight.claim.step_timeout_s)
            run.accepted.append(Accepted(answer.step_run_id, 202, wait_s, dict(ASYNC_WAIT)))
            step.state, step.wait_row = StepState.WAITING, answer.step_run_id
            return
        run.answers.append((answer.step_run_id, answer.outcome))
        error = outcome.error or f"agent answered HTTP {outcome.status}"
        if call.item is None:
            if outcome.ok:
                step.state, step.output = StepState.SUCCEEDED, outcome.output
            else:
                step.state, step.reason = StepState.FAILED, error
                self._failed(run, call.key, error, outcome.retryable)
            return
        index = call.item
        step.item_states[index] = StepState.SUCCEEDED if outcome.ok else StepState.FAILED
        step.item_outputs[index] = outcome.output if outcome.ok else None
        if not outcome.ok and step.state is StepState.RUNNING:
            step.reason = f"item {index}: {error}"
            self._failed(run, call.key, step.reason, outcome.retryable)
        self._fan_out_ended(run, call.key)

    def _fan_out_ended(self, run: _Run, key: str) -> None:
        """A fan-out whose items all ended well succeeds with their outputs, in order; one
        whose item failed has failed (`_failed`); its own row says so."""
        step = run.steps[key]
        state = fan_out_state(step.item_states)
        if state is StepState.SUCCEEDED and step.state is StepState.RUNNING:
            step.state, step.output = StepState.SUCCEEDED, list(step.item_outputs)
            self._close(run, key, StepStatus.SUCCEEDED, body=json.dumps(step.output))
        elif state in (StepState.FAILED, StepState.CANCELLED) and step.state is StepState.RUNNING:
            step.state = state
            self._close(run, key, StepStatus(state), error=step.reason)

    def _close(
        self,
        run: _Run,
        key: str,
        status: StepStatus,
        *,
        body: str | None = None,
        error: str | None = None,
    ) -> None:
        own = run.steps[key].own_row
        if own is not None:
            run.closes.append(StepClose(own, status, body, error))
        else:  # its own row was not written: the end is a row of its own
            run.mark(key, status, error, body=body)

    def _failed(self, run: _Run, key: str, error: str, retryable: bool) -> None:
        if run.failure is None:
            run.failure = (key, error, retryable)
        self._cancel_waiting(run, f"not started: step {key} failed")
        if run.steps[key].state is StepState.RUNNING:  # a fan-out
            run.steps[key].state = StepState.FAILED
            self._close(run, key, StepStatus.FAILED, error=error)

    def _cancel_waiting(self, run: _Run, reason: str | None) -> None:
        """Stop every call not at the agent yet: cancelled with `reason`, or (None: the
        worker stops) left pending for whoever resumes the run. With a reason (a step
        failed), the steps that wait are cancelled too (only while their rows still wait):
        nothing starts after them any more."""
        if reason is not None:
            why = f"cancelled while it waited: {reason.removeprefix('not started: ')}"
            for row, key in run.waits().items():
                run.steps[key].state, run.steps[key].reason = StepState.CANCELLED, why
                run.closes.append(StepClose(row, StepStatus.CANCELLED, None, why))
                run.waits_cancelled = True
        for call in [c for c in run.calls if c.phase == WAITING]:
            assert call.task is not None
            call.task.cancel()
            run.calls.discard(call)
            step = run.steps[call.key]
            if reason is None:
                if call.item is not None:
                    step.item_states[call.item] = StepState.PENDING
                continue
            run.mark(call.key, StepStatus.CANCELLED, reason, call.item)
            if call.item is None:
                step.state, step.reason = StepState.CANCELLED, reason
            else:
                step.item_states[call.item] = StepState.CANCELLED
                step.reason = step.reason or reason
                self._fan_out_ended(run, call.key)

    # --- waits -------------------------------------------------------------------------------

    async def _park(self, run: _Run) -> bool:
        """Park the run (only waits are open): True when it was not parked because a wait
        moved meanwhile (taken in: go on), False when it was parked (its wake-up sent when
        it is within WAKE_HORIZON_S, else left to housekeeping's horizon pass, so no worker
        holds it for hours) or is no longer this claim's. The park is not retried through a
        database outage: a retry after a commit whose acknowledgement was lost could find
        the run woken by then, under the same attempt (`db.claims`); the lease expires
        instead, and recovery takes the run over."""
        flight, claim = run.flight, run.flight.claim
        park = partial(runs.park, claim=claim, waiting=list(run.waits()))
        try:
            parked = await self.commits.write(claim, None, park)
        except OperationalError:
            log.warning("could not park execution %s; recovery will resume it", claim.execution_id)
            return False
        if parked is None:
            return False
        if parked.delay_ms is None:
            if not parked.moved:
                raise RuntimeError(f"graph run {claim.execution_id} waits on no open wait")
            return await self._take_in(run, parked.moved)
        if not parked.wake:  # beyond WAKE_HORIZON_S: housekeeping sends it when it nears
            return False
        wake = RunMessage.wake(
            claim.execution_id,
            max_retries=flight.max_retries,
            retries=flight.retries,
            delay_ms=parked.delay_ms,
            urgent=claim.urgent,
        )
        try:
            await self._send(wake)
        except Exception:  # Redis: housekeeping sends it again from the row
            log.warning("could not send the wake-up of execution %s", claim.execution_id)
        return False

    async def _take_in(self, run: _Run, moved: Sequence[Any]) -> bool:
        """Take in wait rows resolved (their outcome) or past their wait_until (ended now by
        their kind's rule, each only while it still waits: a resolution that came first
        wins, and is read at the next look). False if the run is no longer this claim's."""
        claim = run.flight.claim
        waits = run.waits()
        ends: dict[int, WaitEnd] = {}
        for row in moved:
            key = waits.get(row.id)
            if key is None or run.steps[key].state is not StepState.WAITING:
                continue  # cancelled meanwhile: another wait of the run failed it
            if row.status != StepStatus.WAITING:
                self._resolved(run, key, StepStatus(row.status), row.response_body, row.error)
            elif row.past:
                ends[row.id] = self._timed_out(run, key, row.wait or {})
        if not ends:
            return True
        end = partial(runs.end_waits, claim=claim, lease_s=self.lease_s, ends=list(ends.values()))
        ended = await self._write(claim, None, end)
        if ended is None:
            return False
        for row_id, body in ended.items():
            wait_end = ends[row_id]
            if run.steps[waits[row_id]].state is not StepState.WAITING:
                continue
            self._resolved(run, waits[row_id], wait_end.status, body, wait_end.error)
        return True

    def _resolved(
        self, run: _Run, key: str, status: StepStatus, body: str | None, error: str | None
    ) -> None:
        """A wait's outcome, as its row stores it: the step succeeded (its output), was
        skipped (an approval rejected with on_reject skip), failed for good, or cancelled."""
        step = run.steps[key]
        step.wait_row = None
        if status is StepStatus.SUCCEEDED:
            step.state, step.output = StepState.SUCCEEDED, _output(body)
        elif status is StepStatus.SKIPPED:
            step.state, step.reason = StepState.SKIPPED, error
        elif status is StepStatus.FAILED:
            step.state, step.reason = StepState.FAILED, error or "failed"
            self._failed(run, key, step.reason, False)
        else:
            step.state, step.reason = StepState.CANCELLED, error

    def _timed_out(self, run: _Run, key: str, wait: Mapping[str, Any]) -> WaitEnd:
        """How a wait past its wait_until ends, by its kind (as its row recorded it)."""
        step = run.graph.by_key[key]
        row = run.steps[key].wait_row
        assert row is not None
        kind = wait.get("kind")
        if kind == StepKind.SLEEP:
            return WaitEnd(row, StepStatus.SUCCEEDED)  # {"slept_until"}: written by the database
        timeout_s = step.wait_s(run.flight.claim.step_timeout_s)
        if kind == StepKind.ASYNC:
            error = f"no callback within the step's timeout ({timeout_s} s)"
            return WaitEnd(row, StepStatus.FAILED, error=error)
        if wait.get("on_timeout") == OnTimeout.APPROVE:
            body = json.dumps({"approved": True, "by": "timeout", "comment": None})
            return WaitEnd(row, StepStatus.SUCCEEDED, body=body, approved=True)
        error = f"rejected: no decision within the step's timeout ({timeout_s} s)"
        skip = wait.get("on_reject") == OnReject.SKIP
        status = StepStatus.SKIPPED if skip else StepStatus.FAILED
        return WaitEnd(row, status, error=error, approved=False)

    # --- one call ----------------------------------------------------------------------------

    async def _call(self, run: _Run, call: _Call) -> None:
        """Wait for flow control, record the start, call the agent, retry; hand the last
        answer (None: the run is no longer ours) to the coordinator."""
        flight, claim = run.flight, run.flight.claim
        step = run.graph.by_key[call.key]
        url = step.agent_url or claim.agent_url
        # An async step's timeout_s covers its whole wait; its request has the automation's.
        timeout_s = claim.step_timeout_s if step.kind is StepKind.ASYNC else None
        timeout_s = timeout_s or step.timeout_s or claim.step_timeout_s
        max_retries = flight.max_retries if step.max_retries is None else step.max_retries
        shown = (
            claim.request_headers if step.request_headers is None else dict(step.request_headers)
        )
        key = call_key(claim.execution_id, call.key, call.item)
        tries = 0
        while True:
            holder = f"{key}:{claim.attempt}:{tries}"
            call.phase = WAITING
            async with run.slots:
                answer = await self._try(run, call, holder, key, url, timeout_s, shown)
            if answer is None:
                return  # the run is no longer ours, or its headers cannot be had
            outcome = answer.outcome
            if outcome.ok or not outcome.retryable or tries >= max_retries:
                run.events.put_nowait((call, answer))
                return
            await self._write(claim, answer, _nothing)  # the try, kept
            delay_ms = self._backoff_ms(tries)
            if outcome.retry_after_s is not None:
                delay_ms = max(delay_ms, int(outcome.retry_after_s * 1000))
            tries += 1
            call.phase = WAITING
            await asyncio.sleep(delay_ms / 1000)

    async def _try(
        self,
        run: _Run,
        call: _Call,
        holder: str,
        key: str,
        url: str,
        timeout_s: int,
        shown: dict[str, str],
    ) -> Answer | None:
        """One try of a call: its permit, its start, the agent's answer; None when the
        coordinator has been told the call's end already."""
        claim = run.flight.claim
        if claim.flow_controlled:
            async with run.pollers:
                await self._graph_permit(claim, holder, timeout_s)
        call.phase = STARTING
        try:
            payload = graph_payload(claim, run, call)
            request = stored_request(url, {**shown, "Idempotency-Key": key}, payload)
            request["body"].pop(_NOT_STORED, None)
            request["not_stored"] = [*request["not_stored"], _NOT_STORED]
            if run.graph.by_key[call.key].kind is StepKind.ASYNC:
                request["not_stored"].append("callback_url")
            start = runs.StepStart(
                claim, run.numbers[call.key], request, key=call.key, item=call.item
            )
            step_run_id = await self._retrying(partial(self.commits.start, start))
            if step_run_id is None:
                run.events.put_nowait((call, None))
                return None
            graph_step = run.graph.by_key[call.key]
            if graph_step.kind is StepKind.ASYNC:  # sent, never stored: it is a credential
                wait_s = graph_step.wait_s(claim.step_timeout_s)
                expires = datetime.now(UTC) + timedelta(seconds=wait_s + CALLBACK_SLACK_S)
                payload["callback_url"] = callback_url(self.settings, step_run_id, expires)
            try:
                headers, sent = await self._headers(run, call.key, shown, url)
            except SecretUnreadable as exc:
                outcome = StepOutcome.failure(f"request headers: {exc}", 0, retryable=False)
                run.events.put_nowait((call, Answer(step_run_id, outcome)))
                return None
            sealed = claim.signing_secret
            if claim.attempt == 1 and not run.called:  # the run's first call: its lateness
                run.called = True
                metrics.first_call(claim.trigger, claim.scheduled_for.timestamp(), time.time())
            call.phase = CALLING
            outcome = await call_agent(
                self.client,
                url,
                payload,
                idempotency_key=key,
                timeout_s=timeout_s,
                max_bytes=self.settings.max_response_bytes,
                signing_secret=None if sealed is None else self.settings.secret_box().open(sealed),
                extra_headers=headers,
            )
        finally:
            if claim.concurrency_limit is not None:
                await asyncio.shield(self.flow.release(claim.automation_id, holder))
        outcome = redacted(outcome, sent)
        metrics.step_called(outcome)
        return Answer(step_run_id, outcome)

    async def _graph_permit(self, claim: runs.Claim, holder: str, timeout_s: int) -> None:
        """Wait on the loop until the automation's flow control admits this call."""
        while True:
            try:
                wait_ms = await self.flow.acquire(
                    claim.automation_id,
                    holder,
                    concurrency=claim.concurrency_limit,
                    rate_per_s=claim.rate_limit_per_s,
                    hold_s=timeout_s + self.lease_s,
                )
            except asyncio.CancelledError:
                if claim.concurrency_limit is not None:  # the permit may have been taken
                    await asyncio.shield(self.flow.release(claim.automation_id, holder))
                raise
            if wait_ms == 0:
                return
            metrics.flow_waited(busy=wait_ms == BUSY)
            pause_s = (BUSY_POLL_MS if wait_ms == BUSY else wait_ms) / 1000
            await asyncio.sleep(pause_s * (0.5 + random.random()))

    async def _headers(
        self, run: _Run, key: str, shown: dict[str, str], url: str
    ) -> tuple[dict[str, str] | None, list[str]]:
        """A step's request headers with its secrets filled in, looked up once a run."""
        if not shown:
            return None, []
        if key not in run.headers:
            claim = run.flight.claim
            run.headers[key] = asyncio.ensure_future(
                self._db(partial(_resolve, claim.workspace_id, shown, url))
            )
        return await asyncio.shield(run.headers[key])

    # --- the run's end --------------------------------------------------------------------

    async def _finish(self, run: _Run, status: ExecutionStatus) -> None:
        claim = run.flight.claim
        if status is ExecutionStatus.SUCCEEDED:
            result = {key: run.steps[key].output for key in sinks(run.graph)}
            if await self._end(claim, None, status, result=result):
                metrics.run_ended(status)
            return
        error = None
        if run.failure is not None:
            error = f"step {run.failure[0]}: {run.failure[1]}"
        if not await self._end(claim, None, status, error=error):
            return
        metrics.run_ended(status)
        if status is ExecutionStatus.FAILED:
            retryable = run.failure is not None and run.failure[2]
            report = FailureReport.EXHAUSTED if retryable else FailureReport.REJECTED
            await self._send(
                RunMessage.failed(
                    claim.execution_id,
                    retries=run.flight.retries,
                    report=report,
                    urgent=claim.urgent,
                )
            )

    async def _hand_back(self, run: _Run) -> None:
        """The worker stops: the run's fan-outs' own rows close, and the run goes back to
        the queue without spending a retry; whoever claims it resumes where it stands."""
        flight, claim = run.flight, run.flight.claim
        for step in run.steps.values():
            if step.state is StepState.RUNNING and step.own_row is not None:
                run.closes.append(StepClose(step.own_row, StepStatus.CANCELLED, None, HANDED_BACK))
        if await self._record(run) is None:
            return
        if await self._release(None, claim, HANDED_BACK, 0):
            await self._send(
                RunMessage.hand_back(
                    claim.execution_id,
                    max_retries=flight.max_retries,
                    retries=flight.retries,
                    urgent=claim.urgent,
                )
            )


def _cut(run: _Run) -> None:
    """Drop every call of a run no longer this claim's (its rows were closed by whoever
    took it: a cancel, a takeover)."""
    for call in run.calls:
        if call.task is not None:
            call.task.cancel()
    run.calls.clear()
    run.flight.calling = False


def graph_payload(claim: runs.Claim, run: _Run, call: _Call) -> dict[str, Any]:
    """The body of one call of a graph's step: a chain step's fields (`message` and `input`
    rendered from the step's templates), plus `step_key`, `steps` (the outputs of its
    needs) and, for an item of a fan-out, `item` and `index`. `previous_output` is the
    output of its need when it has exactly one, else null."""
    step = run.graph.by_key[call.key]
    needs = call.needs
    body = {
        "thread_id": str(claim.execution_id),
        "automation_id": str(claim.automation_id),
        "user_id": claim.owner_id,
        "message": call.rendered.message,
        "project_context": claim.project_context,
        "step_number": run.numbers[call.key],
        "total_steps": len(run.graph.steps),
        "timestamp": datetime.now(UTC).isoformat(),
        "execution_id": str(claim.execution_id),
        "schedule_id": str(claim.schedule_id) if claim.schedule_id else None,
        "scheduled_for": claim.scheduled_for.isoformat(),
        "attempt": claim.attempt,
        "previous_output": needs[step.waits_for[0]]["output"] if len(needs) == 1 else None,
        "input": call.rendered.input,
        "step_key": call.key,
        "steps": needs,
    }
    if call.item is not None:
        body["item"] = run.steps[call.key].items[call.item]  # type: ignore[index]
        body["index"] = call.item
    return body


def _nothing(session: Any) -> None:
    return None


def _moved_waits(ids: list[int]) -> list[Any]:
    with session_scope() as session:
        return runs.moved_waits(session, ids)


def _graph_rows(execution_id: Any) -> list[Any]:
    with session_scope() as session:
        return runs.graph_rows(session, execution_id)


def _resolve(
    workspace_id: Any, headers: dict[str, str], url: str
) -> tuple[dict[str, str], list[str]]:
    with session_scope() as session:
        return resolve_call_headers(session, workspace_id, headers, url)
