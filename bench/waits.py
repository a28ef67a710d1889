"""Runs that wait cost no worker: N runs parked on an approval, the workers measured.

    python -m bench.waits --runs 10000 --minutes 3

The Procfile's `worker` and `dispatcher` run against a fresh database and an empty Redis
database; the `dispatch` and `housekeeping` ticks are sent every 60 s, as the scheduler
sends them (housekeeping's pass over parked runs included). First the processes are
measured idle for `--minutes`; then N runs of one graph (an approval of the default
timeout, 24 h, before a step) are made and sent, the worker parks each (its wait row
`waiting`, the run `waiting` with no lease), and, once all N are parked, the same
processes are measured again for `--minutes`. No agent is called.

Figures per window, summed over every process of the `worker` and of the `dispatcher`
(their process groups, read from /proc): RSS at the window's start, at its end and its
peak (sampled every 2 s), and CPU time (user + system) spent in the window; and the run
messages Redis holds at the window's end (`HLEN` of the run queues' and their delay queues' `.msgs`:
queued, delayed, or fetched and held unacknowledged by a worker). With the wake horizon a
parked run's wake-up is not in Redis until its instant is within WAKE_HORIZON_S
(`core.limits`), so the parked window should match the idle one; before it, each parked
run's wake-up was a delayed message every worker fetched and held in memory until its time.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from bench.burst import DEFAULT_WS, db_scalar, open_quotas
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
from testkit.processes import READY, Processes, processes

TICK_EVERY_S = 60.0
SAMPLE_EVERY_S = 2.0
ROLES = ("worker", "dispatcher")
RUN_QUEUES = ("default", "default.DQ", "urgent", "urgent.DQ")
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
QUOTA = 100_000_000
GRAPH: list[dict[str, Any]] = [
    {"key": "ok", "kind": "approval", "message": "Publish run {{ input.n }}?"},
    {"key": "publish", "needs": ["ok"], "message": "publish"},
]


def group_usage(pgid: int) -> tuple[int, float]:
    """RSS (bytes) and CPU time (s, user + system) of every process in group `pgid`."""
    rss, cpu = 0, 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/statm") as f:
                resident = int(f.read().split()[1])
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) != pgid:  # pgrp: the fifth field of stat
            continue
        rss += resident * PAGE
        cpu += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return rss, cpu


def run_messages(client: Any) -> int:
    return sum(int(client.hlen(f"dramatiq:{queue}.msgs")) for queue in RUN_QUEUES)


@dataclass
class Window:
    """One measured window: per role, RSS at its start, end and peak, CPU spent."""

    rss_start: dict[str, int] = field(default_factory=dict)
    rss_end: dict[str, int] = field(default_factory=dict)
    rss_peak: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    messages: int = 0


def measure(procs: Processes, client: Any, seconds: float, tick: Callable[[], None]) -> Window:
    groups = {role: procs.running[role].pid for role in ROLES}
    window = Window(rss_peak=dict.fromkeys(ROLES, 0))
    start = {role: group_usage(pgid) for role, pgid in groups.items()}
    window.rss_start = {role: rss for role, (rss, _) in start.items()}
    cpu_start = {role: cpu for role, (_, cpu) in start.items()}
    ends = time.time() + seconds
    while True:
        tick()
        for role, pgid in groups.items():
            rss, _ = group_usage(pgid)
            window.rss_peak[role] = max(window.rss_peak[role], rss)
        if time.time() >= ends:
            break
        time.sleep(min(SAMPLE_EVERY_S, max(0.0, ends - time.time())))
    for role, pgid in groups.items():
        rss, cpu = group_usage(pgid)
        window.rss_end[role] = rss
        window.cpu_s[role] = cpu - cpu_start[role]
    window.messages = run_messages(client)
    return window


def make_runs(n: int) -> None:
    """One graph automation (as `stepwise apply` writes it) and N queued runs of it, sent."""
    from core.automation import AutomationInput, steps_of
    from db.runs import RunMessage
    from db.session import session_scope
    from service import automations
    from service.definitions import apply
    from tasks.send import send_runs

    with session_scope() as session:
        open_quotas(session, QUOTA)
    data = AutomationInput(
        name="waits bench",
        agent_url="http://127.0.0.1:9/agent",  # never called: every run waits on its approval
        steps=steps_of(GRAPH),
        project_context="benchmark",
        step_timeout_s=30,
        max_retries=3,
    )
    made: list[Any] = []
    apply(lambda unit: made.append(automations.create_in(unit, data).id), person=None)
    with session_scope() as session:
        ids = session.execute(
            text(
                """
                INSERT INTO executions (id, automation_id, workspace_id, trigger, scheduled_for,
                    status, attempt, queued_at, available_at, current_step, total_steps, input)
                SELECT gen_random_uuid(), CAST(:a AS uuid), CAST(:ws AS uuid), 'manual', now(),
                    'queued', 0, now(), now(), 0, 2, jsonb_build_object('n', g)
                FROM generate_series(1, :n) AS g
                RETURNING id
                """
            ),
            {"a": str(made[0]), "ws": DEFAULT_WS, "n": n},
        ).scalars()
        messages = [RunMessage.start(i, max_retries=3, urgent=False) for i in ids]
    for start in range(0, len(messages), 1000):
        send_runs(messages[start : start + 1000])


def run_once(servers: Servers, *, n: int, minutes: float, park_timeout: float) -> dict[str, Any]:
    import redis

    with bench_database(servers), processes() as procs:
        from tasks.actors import dispatch, housekeeping

        client = redis.Redis.from_url(servers.redis_url)
        for role in ROLES:
            procs.start(role)
        for role in ROLES:
            procs.wait_ready(role, READY, timeout=60)
        next_tick = [0.0]

        def tick() -> None:  # as the scheduler: dispatch and housekeeping every minute
            if time.time() >= next_tick[0]:
                dispatch.send()
                housekeeping.send()
                next_tick[0] = time.time() + TICK_EVERY_S

        idle = measure(procs, client, minutes * 60, tick)
        print(f"idle: {idle}", flush=True)
        started = time.time()
        make_runs(n)
        while (parked := db_scalar("SELECT count(*) FROM executions WHERE status = 'waiting'")) < n:
            if time.time() - started > park_timeout:
                raise RuntimeError(f"only {parked} of {n} runs parked in {park_timeout:.0f} s")
            tick()
            time.sleep(1)
        park_s = time.time() - started
        print(f"{n} runs parked in {park_s:.1f} s", flush=True)
        waiting = measure(procs, client, minutes * 60, tick)
        print(f"parked: {waiting}", flush=True)
        still = db_scalar("SELECT count(*) FROM executions WHERE status = 'waiting'")
        procs.stop_all()
        client.close()
    return {"idle": idle, "parked": waiting, "park_s": park_s, "still_parked": still}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_server_args(parser)
    parser.add_argument("--runs", type=int, default=10_000, help="runs parked on an approval")
    parser.add_argument("--minutes", type=float, default=3, help="length of each window")
    parser.add_argument("--park-timeout", type=float, default=900)
    parser.add_argument("--label", default="", help="what the row measures (e.g. a version)")
    args = parser.parse_args()
    stop_on_sigterm()
    started = machine()
    servers = start_servers(args)
    try:
        result = run_once(
            servers, n=args.runs, minutes=args.minutes, park_timeout=args.park_timeout
        )
    finally:
        servers.close()
    mib = 1024 * 1024
    table: list[tuple[str, ...]] = [
        (
            "window",
            "worker RSS start / end / peak (MiB)",
            "worker CPU (s)",
            "dispatcher RSS start / end / peak (MiB)",
            "dispatcher CPU (s)",
            "run messages in Redis",
        )
    ]
    for name, window in (("idle", result["idle"]), (f"{args.runs:,} parked", result["parked"])):
        table.append(
            (
                name,
                " / ".join(
                    fmt(r["worker"] / mib)
                    for r in (window.rss_start, window.rss_end, window.rss_peak)
                ),
                fmt(round(window.cpu_s["worker"], 2)),
                " / ".join(
                    fmt(r["dispatcher"] / mib)
                    for r in (window.rss_start, window.rss_end, window.rss_peak)
                ),
                fmt(round(window.cpu_s["dispatcher"], 2)),
                fmt(window.messages),
            )
        )
    label = f" ({args.label})" if args.label else ""
    notes = (
        f"{args.runs:,} runs parked in {result['park_s']:.1f} s; windows of {args.minutes:g} min; "
        f"{result['still_parked']:,} still parked at the end. RSS and CPU summed over each "
        "role's processes (/proc)."
    )
    report(f"Waiting runs and the workers{label}", started, table, notes)


if __name__ == "__main__":
    main()
