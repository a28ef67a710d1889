"""The workers' and the dispatcher's Prometheus metrics, and what records them cheaply.

Every metric of these processes is declared here (docs/METRICS.md lists them with the
API's). The `dramatiq` command forks its worker processes: `stepwise metered` gives each
Procfile process group a fresh multiprocess directory (PROMETHEUS_MULTIPROC_DIR) before
anything is imported, so prometheus-client writes each process's values to its own
files there, and Dramatiq's Prometheus middleware (added by `tasks.broker` when that
directory is set) serves the sum of the group's files on one port. Without it (tests,
benchmarks, a worker inside another process) the values stay in memory and cost the same.

The hot path pays a few dictionary lookups and an add per step: label children are
looked up once and kept, and nothing here reads the database or Redis. Labels take
values from small fixed sets (statuses, triggers, outcomes, queues, tick names), never
an automation, a workspace, an execution or a URL, so every process exports a bounded
number of series whatever the workload.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

from core.outcome import StepOutcome
from core.vocabulary import Trigger
from db.dispatch import SlotTally

# Seconds; a step call takes milliseconds to minutes (the step timeout is at most an hour).
CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
# Slot lateness: a run starts at its slot to within a second when all is well.
LATENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
TICK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 55)

# --- runs and steps (worker processes) ----------------------------------------------------

RUNS = Counter(
    "stepwise_runs",
    "Runs that ended in a worker process, by final status (succeeded, failed, or skipped "
    "by their schedule's overlap policy).",
    ["status"],
)
STEP_CALLS = Histogram(
    "stepwise_step_call_duration_seconds",
    "Agent calls of steps, by outcome and HTTP status class, and how long each took.",
    ["outcome", "code"],
    buckets=CALL_BUCKETS,
)
SLOT_LATENESS = Histogram(
    "stepwise_slot_lateness_seconds",
    "From a scheduled slot to the first agent call of its run.",
    buckets=LATENESS_BUCKETS,
)
IN_FLIGHT = Gauge(
    "stepwise_runs_in_flight",
    "Runs this worker process holds now (set with its beacon, every 5 s).",
    multiprocess_mode="liveall",
)
FLOW_WAITS = Counter(
    "stepwise_flow_control_waits",
    "Agent calls that waited for their automation's flow control, by the limit reached.",
    ["limit"],
)
FLOW_WAIT_SECONDS = Counter(
    "stepwise_flow_control_wait_seconds",
    "Time agent calls spent waiting for their automation's flow control.",
)
FLOW_HANDBACKS = Counter(
    "stepwise_flow_control_handbacks",
    "Runs sent back to the queue because their flow control would have made them wait long.",
)

# --- recovery (housekeeping and every worker's lease sweep) ---------------------------------

RECOVERED = Counter(
    "stepwise_runs_recovered",
    "Runs sent again because their message or their worker was lost, by who found them.",
    ["by"],
)
GAVE_UP = Counter(
    "stepwise_runs_given_up",
    "Runs failed by housekeeping because they were recovered too many times.",
)

# --- dispatch and the periodic ticks (the dispatcher) -----------------------------------------

DISPATCH_SECONDS = Histogram(
    "stepwise_dispatch_tick_duration_seconds",
    "How long one dispatch tick took (claim, insert, advance, send).",
    buckets=TICK_BUCKETS,
)
SLOTS = Counter(
    "stepwise_dispatch_slots",
    "Scheduled slots the dispatch ticks handled: dispatched (a run was sent), missed "
    "(the misfire policy or the catch-up window passed over it), skipped (over the "
    "workspace's runs-a-minute quota).",
    ["outcome"],
)
TICKS = Counter(
    "stepwise_ticks",
    "Periodic ticks the dispatcher ran, by tick and outcome (ok, or error: it raised).",
    ["tick", "outcome"],
)
DELIVERIES = Counter(
    "stepwise_notification_deliveries",
    "Failure notifications sent to channels, by outcome.",
    ["outcome"],
)

# Label children kept once: `.labels()` takes a lock and builds a key on every call.
_RUN_CHILDREN = {status: RUNS.labels(status) for status in ("succeeded", "failed", "skipped")}
_CODES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
# The pairs that happen, made up front so that their rates start from zero.
_CALL_CHILDREN = {
    pair: STEP_CALLS.labels(*pair)
    for pair in (
        ("succeeded", "2xx"),
        ("retryable", "4xx"),  # 408, 429
        ("retryable", "5xx"),
        ("retryable", "none"),  # timeouts, connection errors
        ("failed", "3xx"),  # redirects are not followed
        ("failed", "4xx"),
        ("failed", "none"),  # refused by the egress policy, a bad URL
    )
}


def run_ended(status: str) -> None:
    """Count a run that ended (`succeeded`, `failed` or `skipped`) in this process."""
    _RUN_CHILDREN[status].inc()


def call_outcome(outcome: StepOutcome) -> tuple[str, str]:
    """The labels of one agent call: succeeded, retryable (a failure worth retrying) or
    failed (for good); and its status class, or `none` when no HTTP answer came."""
    kind = "succeeded" if outcome.ok else "retryable" if outcome.retryable else "failed"
    code = "none" if outcome.status is None else _CODES.get(outcome.status // 100, "none")
    return kind, code


def step_called(outcome: StepOutcome) -> None:
    """Record one agent call and its duration."""
    labels = call_outcome(outcome)
    child = _CALL_CHILDREN.get(labels) or STEP_CALLS.labels(*labels)
    child.observe(outcome.duration_ms / 1000)


def first_call(trigger: str, scheduled_for_s: float, now_s: float) -> None:
    """Record a scheduled slot's lateness as its run makes its first call. Other runs have
    no slot to be late for: a catch-up or backfill run is late on purpose, a manual one
    starts when asked."""
    if trigger == Trigger.SCHEDULE:
        SLOT_LATENESS.observe(max(0.0, now_s - scheduled_for_s))


for _outcome in ("sent", "failed"):
    DELIVERIES.labels(_outcome)  # made up front, so that their rates start from zero

_WAIT_CHILDREN = {True: FLOW_WAITS.labels("concurrency"), False: FLOW_WAITS.labels("rate")}


def flow_waited(*, busy: bool) -> None:
    """Count a call that has to wait: its automation's calls at once are all taken (busy),
    or its calls per second are spent."""
    _WAIT_CHILDREN[busy].inc()


@contextmanager
def tick(name: str) -> Iterator[None]:
    """Count one periodic tick by how it ended (an error is re-raised)."""
    try:
        yield
    except BaseException:
        TICKS.labels(name, "error").inc()
        raise
    TICKS.labels(name, "ok").inc()


def slots_dispatched(tally: SlotTally) -> None:
    """Count the slots one dispatch tick handled."""
    for outcome in ("dispatched", "missed", "skipped"):
        SLOTS.labels(outcome).inc(getattr(tally, outcome))
