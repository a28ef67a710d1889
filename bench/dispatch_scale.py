"""Dispatch at scale: N schedules due at one instant, until every run is enqueued.

    python -m bench.dispatch_scale --n 100000 --runs 3

N one-off schedules (one 3-step automation each) are made due at T; the
Procfile's `dispatcher` process runs; at T the `dispatch` tick is sent, and the
`dispatch` and `housekeeping` ticks again every 60 s as periodiq sends them (a tick
that has not finished within the actor's 55 s time limit is cut short; housekeeping
re-sends runs committed without a message). No worker runs, so nothing is
consumed. Polled every 0.25 s:

- Postgres: executions inserted (`count(*)`), until N;
- Redis: messages stored in the run queue and its delay queue (`HLEN` of their
  `.msgs` hashes: what a worker would fetch), until N;
- the dispatcher's heartbeat (written right after its last send).

Figures are seconds after T. The target is all N in Redis within 30 s (goal 10 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import text

from bench.burst import create_schedules, db_scalar
from bench.common import (
    Servers,
    add_server_args,
    bench_database,
    fmt,
    machine,
    report,
    start_servers,
    stop_on_sigterm,
)
from testkit.processes import READY, processes

TICK_EVERY_S = 60.0
QUEUES = ("default", "default.DQ")


def queued_in_redis(client: Any) -> int:
    return sum(int(client.hlen(f"dramatiq:{queue}.msgs")) for queue in QUEUES)


def run_once(servers: Servers, *, n: int, timeout: float) -> dict[str, float]:
    import redis

    with bench_database(servers), processes() as procs:
        from db.session import db_now, session_scope
        from tasks.actors import dispatch, housekeeping

        client = redis.Redis.from_url(servers.redis_url)
        procs.start("dispatcher")
        procs.wait_ready("dispatcher", READY, timeout=60)
        # The agent is never called: no worker runs.
        with session_scope() as session:
            far = db_now(session) + timedelta(days=1)
        create_schedules(n, "http://127.0.0.1:9/agent", far, kind="oneoff")
        with session_scope() as session:
            due = db_now(session) + timedelta(seconds=5)
            session.execute(text("UPDATE schedules SET run_at = :t, next_run_at = :t"), {"t": due})
        with session_scope() as session:
            session.execute(text("ANALYZE schedules"))
        time.sleep(max(0.0, due.timestamp() - time.time()))
        started = time.time()
        dispatch.send()
        ticks, next_tick = 1, started + TICK_EVERY_S
        in_pg = in_redis = None
        most, most_at = 0, 0.0
        while time.time() - started < timeout and (in_pg is None or in_redis is None):
            now = time.time()
            if in_pg is None and db_scalar("SELECT count(*) FROM executions") >= n:
                in_pg = now - started
            queued = queued_in_redis(client)
            if queued > most:
                most, most_at = queued, now - started
            if in_redis is None and queued >= n:
                in_redis = now - started
            if now >= next_tick:
                dispatch.send()
                housekeeping.send()
                ticks, next_tick = ticks + 1, next_tick + TICK_EVERY_S
            time.sleep(0.25)
        heartbeat = db_scalar("SELECT at FROM heartbeats WHERE name = 'dispatch'")
        executions = db_scalar("SELECT count(*) FROM executions")
        queued = queued_in_redis(client)
        procs.stop_all()
        client.close()
    nan = float("nan")
    return {
        "in_postgres_s": nan if in_pg is None else in_pg,
        "in_redis_s": nan if in_redis is None else in_redis,
        "heartbeat_s": nan if heartbeat is None else heartbeat.timestamp() - started,
        "last_growth_s": most_at,
        "ticks": ticks,
        "executions": executions,
        "messages": queued,
    }


FIGURES = [
    ("in_postgres_s", "all in Postgres (s)"),
    ("in_redis_s", "all in Redis (s)"),
    ("heartbeat_s", "dispatcher done (s)"),
    ("last_growth_s", "last message in (s)"),
    ("ticks", "ticks sent"),
    ("executions", "executions"),
    ("messages", "messages"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_server_args(parser)
    parser.add_argument("--n", type=int, nargs="+", default=[100_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    stop_on_sigterm()
    started = machine()
    servers = start_servers(args)
    table = [("N", *(label for _, label in FIGURES), "per run: all in Redis (s) @ load")]
    try:
        for n in args.n:
            runs = []
            for i in range(args.runs):
                load = os.getloadavg()[0]
                figures = run_once(servers, n=n, timeout=args.timeout)
                print(f"N={n} run {i + 1} (load {load:.1f}): {figures}", flush=True)
                runs.append((figures, load))
            med = {k: statistics.median(r[k] for r, _ in runs) for k, _ in FIGURES}
            per_run = "; ".join(f"{fmt(r['in_redis_s'])} @ {load:.1f}" for r, load in runs)
            table.append((fmt(n), *(fmt(med[k]) for k, _ in FIGURES), per_run))
    finally:
        servers.close()
    report(f"Dispatch at scale (median of {args.runs} runs)", started, table)


if __name__ == "__main__":
    main()
