"""Burst: N schedules of 3-step automations, all due at the same instant.

    python -m bench.burst --n 1000 --latency-ms 0 --runs 3
    python -m bench.burst --n 10000 --latency-ms 0 50 --mode due ahead
    python -m bench.burst --n 1000 --kind oneoff       # the one-off fast path

`--kind cron` (the default) makes the schedules a user makes: cron `* * * * *`
with the default misfire (`run_once`) and overlap (`skip`) policies, all due at
one minute boundary, so every run goes through the overlap check. `--kind oneoff`
makes one-off schedules due at that instant instead: nothing can overlap a
one-off, so its runs skip the check (a labelled extra row, not the users' path).

The Procfile's real dispatcher and worker processes run against a recording agent
process. The periodiq tick is the one thing substituted: the script sends the
same `dispatch` message itself, at the instant the mode says.

- `--mode due` (the worst case): the tick arrives at the due instant, so the
  dispatcher must insert and enqueue all N runs after it (a schedule created
  after the previous tick, e.g. "once at 09:00" made at 08:59:30).
- `--mode ahead` (the cron case): the tick arrives `--lead-s` before the due
  instant, as the 90 s dispatch horizon makes it for cron schedules; the runs
  wait as delayed messages and start at their slot.

Figures: enqueued = last message sent (the dispatcher's heartbeat, written right
after its last send) minus the due instant; step-1 lateness = the agent's arrival
time of step 1 minus `scheduled_for`; makespan = due instant to the last step-3
call; step calls/s over the span of the agent's calls; duplicates = Idempotency-Keys
the agent saw twice; missing = executions that did not succeed. Only the runs of
the due slot count: a tick also dispatches a cron schedule's next slot when it
falls within the dispatch horizon (`--mode due`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from bench.agentproc import agent_process
from bench.common import (
    add_server_args,
    bench_database,
    fmt,
    machine,
    median_of,
    percentile,
    report,
    start_servers,
)
from core.schedule import ScheduleInput
from core.timing import ScheduleSpec
from core.vocabulary import ScheduleKind
from testkit.processes import READY, processes

DEFAULT_WS = "00000000-0000-0000-0000-000000000001"  # core.access.DEFAULT_WORKSPACE_ID
STEPS = json.dumps([{"name": f"step {n}", "message": f"do part {n}"} for n in (1, 2, 3)])
KINDS = ("cron", "oneoff")
# A user's schedule: the policies `ScheduleInput` gives when none are named.
DEFAULTS = ScheduleInput(spec=ScheduleSpec(kind=ScheduleKind.CRON, cron_expr="* * * * *"))

# The schedule a user makes (`stepwise schedule add --cron "* * * * *"`, the API's
# defaults) and the one-off fast path; `:due` is the first slot of either.
_SCHEDULE_ROWS = {
    "cron": "'cron', '* * * * *', NULL",
    "oneoff": "'once', NULL, :due",
}


def open_quotas(session: Any, quota: int) -> None:
    """The default workspace, with room for `quota` automations, schedules and runs a
    minute (a bench makes more than the defaults allow)."""
    session.execute(
        text(
            """
            INSERT INTO workspaces (id, name, max_automations, max_schedules,
                max_runs_per_minute)
            VALUES (CAST(:ws AS uuid), 'Default', :q, :q, :q)
            ON CONFLICT (id) DO UPDATE SET max_automations = :q, max_schedules = :q,
                max_runs_per_minute = :q
            """
        ),
        {"ws": DEFAULT_WS, "q": quota},
    )


def next_minute(at: datetime, *, room_s: float) -> datetime:
    """The first minute boundary at least `room_s` after `at` (a `* * * * *` slot)."""
    later = at + timedelta(seconds=room_s)
    boundary = later.replace(second=0, microsecond=0)
    return boundary if boundary == later else boundary + timedelta(minutes=1)


def due_instant(now: datetime, *, kind: str, room_s: float) -> datetime:
    """The instant all N runs are due: a whole second, and a minute boundary for cron."""
    if kind == "cron":
        return next_minute(now, room_s=room_s)
    later = now + timedelta(seconds=room_s)
    return later.replace(microsecond=0) + timedelta(seconds=1)


def create_schedules(n: int, agent_url: str, due: datetime, *, kind: str = "cron") -> None:
    """N automations and N schedules of `kind` (`KINDS`) whose first slot is `due`,
    set-based; a cron schedule has the policies a user's has by default."""
    if kind == "cron" and due != due.replace(second=0, microsecond=0):
        raise ValueError(f"a `* * * * *` slot is a minute boundary, not {due}")
    from db.session import session_scope

    with session_scope() as session:
        session.execute(
            text(
                """
                INSERT INTO workspaces (id, name, max_runs_per_minute)
                VALUES (CAST(:ws AS uuid), 'Default', 100000000)
                -- a benchmark measures the workers, not the workspace's runs-a-minute quota
                ON CONFLICT (id) DO UPDATE SET max_runs_per_minute = EXCLUDED.max_runs_per_minute
                """
            ),
            {"ws": DEFAULT_WS},
        )
        session.execute(
            text(
                """
                INSERT INTO automations (id, workspace_id, owner_id, name, description, steps,
                    project_context, agent_url, step_timeout_s, max_retries)
                SELECT gen_random_uuid(), CAST(:ws AS uuid), 'bench', 'burst ' || g, '',
                    CAST(:steps AS jsonb), 'benchmark', :url, 30, 3
                FROM generate_series(1, :n) AS g
                """
            ),
            {"steps": STEPS, "url": agent_url, "n": n, "ws": DEFAULT_WS},
        )
        session.execute(
            text(
                f"""
                INSERT INTO schedules (id, automation_id, workspace_id, kind, cron_expr, run_at,
                    timezone, enabled, misfire_policy, catchup_window_s, overlap_policy, jitter_s,
                    next_run_at, dispatched_count, run_count, success_count, failure_count,
                    missed_count, skipped_count)
                SELECT gen_random_uuid(), id, workspace_id, {_SCHEDULE_ROWS[kind]}, 'UTC', true,
                    :misfire, :catchup, :overlap, 0, :due, 0, 0, 0, 0, 0, 0
                FROM automations
                """
            ),
            {
                "due": due,
                "misfire": DEFAULTS.misfire_policy,
                "catchup": DEFAULTS.catchup_window_s,
                "overlap": DEFAULTS.overlap_policy,
            },
        )


def db_scalar(sql: str, **params: Any) -> Any:
    from db.session import session_scope

    with session_scope() as session:
        return session.execute(text(sql), params).scalar()


# The runs of the burst's slot: a tick dispatches a cron schedule's later slots too
# when they fall within the dispatch horizon (`--mode due`); those are not counted.
OF_SLOT = "scheduled_for = :due"


def wait_final(n: int, due: datetime, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = db_scalar(
            f"SELECT count(*) FROM executions WHERE {OF_SLOT} "
            "AND status NOT IN ('queued', 'running')",
            due=due,
        )
        if done >= n:
            return
        time.sleep(0.5)
    raise RuntimeError(f"only {done} of {n} executions finished within {timeout} s")


def analyse(calls: list[tuple[float, str, str, int]], n: int, due: datetime) -> dict[str, float]:
    calls = [c for c in calls if datetime.fromisoformat(c[2]) == due]
    keys = [c[1] for c in calls]
    first_call: dict[str, tuple[float, str, int]] = {}
    for at, key, scheduled_for, step in calls:
        if key not in first_call or at < first_call[key][0]:
            first_call[key] = (at, scheduled_for, step)
    lateness = [
        at - datetime.fromisoformat(slot).timestamp()
        for at, slot, step in first_call.values()
        if step == 1
    ]
    last_step3 = max((at for at, _, step in first_call.values() if step == 3), default=float("nan"))
    span = max(c[0] for c in calls) - min(c[0] for c in calls)
    heartbeat = db_scalar("SELECT at FROM heartbeats WHERE name = 'dispatch'")
    succeeded = db_scalar(
        f"SELECT count(*) FROM executions WHERE {OF_SLOT} AND status = 'succeeded'", due=due
    )
    executions = db_scalar(f"SELECT count(*) FROM executions WHERE {OF_SLOT}", due=due)
    return {
        "enqueued_s": (heartbeat - due).total_seconds(),
        "late_p50_s": percentile(lateness, 50),
        "late_p95_s": percentile(lateness, 95),
        "late_p99_s": percentile(lateness, 99),
        "late_max_s": max(lateness),
        "makespan_s": last_step3 - due.timestamp(),
        "calls_per_s": len(calls) / span if span > 0 else float("nan"),
        "calls": len(calls),
        "duplicates": len(keys) - len(set(keys)) + max(0, executions - n),
        "missing": n - succeeded,
    }


def run_once(
    servers: Any,
    *,
    n: int,
    latency_ms: float,
    mode: str,
    lead_s: float,
    kind: str = "cron",
    worker_processes: int,
    worker_threads: int,
    timeout: float,
) -> dict[str, float]:
    with bench_database(servers), agent_process(latency_ms) as agent, processes() as procs:
        from db.session import db_now, session_scope

        env = {
            "STEPWISE_WORKER_PROCESSES": str(worker_processes),
            "STEPWISE_WORKER_THREADS": str(worker_threads),
        }
        procs.start("worker", **env)
        procs.start("dispatcher", **env)
        procs.wait_ready("worker", READY, count=worker_processes, timeout=60)
        procs.wait_ready("dispatcher", READY, timeout=60)
        with session_scope() as session:
            now = db_now(session)
        lead = lead_s if mode == "ahead" else 0
        due = due_instant(now, kind=kind, room_s=lead + 3 + n / 5000)
        create_schedules(n, agent.url, due, kind=kind)
        tick_at = due.timestamp() - lead
        time.sleep(max(0.0, tick_at - time.time()))
        from tasks.actors import dispatch

        dispatch.send()
        wait_final(n, due, timeout)
        procs.stop_all()
        calls = agent.stop_and_read()
        return analyse(calls, n, due)


FIGURES = [
    ("enqueued_s", "enqueued after due (s)"),
    ("late_p50_s", "step-1 late p50 (s)"),
    ("late_p95_s", "p95 (s)"),
    ("late_p99_s", "p99 (s)"),
    ("late_max_s", "max (s)"),
    ("makespan_s", "makespan (s)"),
    ("calls_per_s", "step calls/s"),
    ("duplicates", "duplicates"),
    ("missing", "missing"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_server_args(parser)
    parser.add_argument("--n", type=int, nargs="+", default=[1000])
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0])
    parser.add_argument("--mode", nargs="+", choices=("due", "ahead"), default=["due"])
    parser.add_argument(
        "--kind",
        nargs="+",
        choices=KINDS,
        default=["cron"],
        help="cron: a user's `* * * * *` schedules (default); oneoff: the fast path",
    )
    parser.add_argument("--lead-s", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--worker-threads", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    started = machine()
    servers = start_servers(args)
    table = [("N", "agent ms", "kind", "mode", *(label for _, label in FIGURES))]
    try:
        for n, latency, kind, mode in itertools.product(
            args.n, args.latency_ms, args.kind, args.mode
        ):
            runs = []
            for i in range(args.runs):
                figures = run_once(
                    servers,
                    n=n,
                    latency_ms=latency,
                    mode=mode,
                    lead_s=args.lead_s,
                    kind=kind,
                    worker_processes=args.worker_processes,
                    worker_threads=args.worker_threads,
                    timeout=args.timeout,
                )
                print(f"N={n} agent={latency}ms {kind} {mode} run {i + 1}: {figures}", flush=True)
                runs.append(figures)
            med = median_of(runs)
            table.append((fmt(n), fmt(latency), kind, mode, *(fmt(med[k]) for k, _ in FIGURES)))
    finally:
        servers.close()
    report(
        f"Burst (median of {args.runs} runs; workers {args.worker_processes} x "
        f"{args.worker_threads})",
        started,
        table,
    )


if __name__ == "__main__":
    main()
