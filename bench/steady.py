"""Steady: cron schedules every minute plus interval schedules every 10 s, for some minutes.

    python -m bench.steady --cron 500 --interval 200 --minutes 5 --runs 3

Every Procfile process that runs work is started as in production: periodiq's
scheduler (real minute ticks), the dispatcher and the worker, against a
recording agent. Both kinds of schedule are anchored at the next minute
boundary M0; the window is [M0, M0 + minutes). Lateness = the agent's arrival
of step 1 minus `scheduled_for`, for slots in the window. Misses = slots in the
window whose step 1 never reached the agent; duplicates = Idempotency-Keys the
agent saw more than once.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from bench.agentproc import agent_process
from bench.burst import DEFAULT_WS, STEPS
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
from testkit.processes import READY, processes


def create_schedules(cron: int, interval: int, agent_url: str, m0: datetime) -> None:
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
                SELECT gen_random_uuid(), CAST(:ws AS uuid), 'bench', 'steady ' || g, '',
                    CAST(:steps AS jsonb), 'benchmark', :url, 30, 3
                FROM generate_series(1, :n) AS g
                """
            ),
            {"steps": STEPS, "url": agent_url, "n": cron + interval, "ws": DEFAULT_WS},
        )
        # The first `cron` automations get a cron schedule, the rest an interval one;
        # created_at = M0 anchors the interval slots on the minute.
        session.execute(
            text(
                """
                INSERT INTO schedules (id, automation_id, workspace_id, kind, cron_expr, interval_s,
                    timezone, enabled, misfire_policy, catchup_window_s, overlap_policy, jitter_s,
                    next_run_at, dispatched_count, run_count, success_count, failure_count,
                    missed_count, skipped_count, created_at)
                SELECT gen_random_uuid(), id, workspace_id,
                    CASE WHEN rn <= :cron THEN 'cron' ELSE 'interval' END,
                    CASE WHEN rn <= :cron THEN '* * * * *' END,
                    CASE WHEN rn <= :cron THEN NULL ELSE 10 END,
                    'UTC', true, 'run_once', 3600, 'skip', 0, :m0, 0, 0, 0, 0, 0, 0, :m0
                FROM (
                    SELECT id, workspace_id, row_number() OVER (ORDER BY name) AS rn
                    FROM automations
                ) a
                """
            ),
            {"cron": cron, "m0": m0},
        )


def run_once(
    servers: Any,
    *,
    cron: int,
    interval: int,
    minutes: int,
    latency_ms: float,
    worker_processes: int,
    worker_threads: int,
) -> dict[str, float]:
    with bench_database(servers), agent_process(latency_ms) as agent, processes() as procs:
        from db.session import db_now, session_scope

        with session_scope() as session:
            now = db_now(session)
        m0 = (now + timedelta(seconds=75)).replace(second=0, microsecond=0)
        create_schedules(cron, interval, agent.url, m0)
        env = {
            "STEPWISE_WORKER_PROCESSES": str(worker_processes),
            "STEPWISE_WORKER_THREADS": str(worker_threads),
        }
        procs.start("worker", **env)
        procs.start("dispatcher", **env)
        procs.wait_ready("worker", READY, count=worker_processes, timeout=60)
        procs.wait_ready("dispatcher", READY, timeout=60)
        procs.start("scheduler", **env)
        end = m0 + timedelta(minutes=minutes)
        print(f"window {m0:%H:%M:%S} .. {end:%H:%M:%S} UTC", flush=True)
        time.sleep(max(0.0, end.timestamp() + 20 - time.time()))
        procs.stop_all()
        calls = agent.stop_and_read()
        return analyse(calls, cron, interval, minutes, m0, end)


def analyse(
    calls: list[Any], cron: int, interval: int, minutes: int, m0: datetime, end: datetime
) -> dict[str, float]:
    keys = [c[1] for c in calls]
    first: dict[str, tuple[float, float]] = {}
    for at, key, slot, step in calls:
        if step != 1:
            continue
        scheduled = datetime.fromisoformat(slot).timestamp()
        if m0.timestamp() <= scheduled < end.timestamp() and (
            key not in first or at < first[key][0]
        ):
            first[key] = (at, scheduled)
    lateness = [at - slot for at, slot in first.values()]
    expected = cron * minutes + interval * minutes * 6
    return {
        "slots": expected,
        "late_p50_s": percentile(lateness, 50),
        "late_p99_s": percentile(lateness, 99),
        "late_max_s": max(lateness) if lateness else float("nan"),
        "duplicates": len(keys) - len(set(keys)),
        "misses": expected - len(first),
    }


FIGURES = [
    ("slots", "slots in window"),
    ("late_p50_s", "step-1 late p50 (s)"),
    ("late_p99_s", "p99 (s)"),
    ("late_max_s", "max (s)"),
    ("duplicates", "duplicates"),
    ("misses", "misses"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_server_args(parser)
    parser.add_argument("--cron", type=int, default=500)
    parser.add_argument("--interval", type=int, default=200)
    parser.add_argument("--minutes", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--worker-threads", type=int, default=8)
    args = parser.parse_args()
    started = machine()
    servers = start_servers(args)
    runs = []
    try:
        for i in range(args.runs):
            figures = run_once(
                servers,
                cron=args.cron,
                interval=args.interval,
                minutes=args.minutes,
                latency_ms=args.latency_ms,
                worker_processes=args.worker_processes,
                worker_threads=args.worker_threads,
            )
            print(f"run {i + 1}: {figures}", flush=True)
            runs.append(figures)
    finally:
        servers.close()
    med = median_of(runs)
    table = [
        ("cron x 1 min", "interval x 10 s", "minutes", *(label for _, label in FIGURES)),
        (fmt(args.cron), fmt(args.interval), fmt(args.minutes), *(fmt(med[k]) for k, _ in FIGURES)),
    ]
    report(
        f"Steady (median of {args.runs} runs; agent {args.latency_ms:g} ms; workers "
        f"{args.worker_processes} x {args.worker_threads})",
        started,
        table,
        notes="Per run: "
        + "; ".join(", ".join(f"{k}={fmt(v)}" for k, v in r.items() if k != "slots") for r in runs),
    )


if __name__ == "__main__":
    main()
