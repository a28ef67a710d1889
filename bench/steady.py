"""Steady: cron schedules every minute plus interval schedules every 10 s, for an hour.

    python -m bench.steady                       # the hour: 1,000 + 1,000, agent 200 ms
    python -m bench.steady --cron 100 --interval 50 --minutes 3   # a short check

Every Procfile process that runs work is started as in production, with the
Procfile's defaults: periodiq's scheduler (real minute ticks), the dispatcher and
the worker, against a recording agent. Both kinds of schedule are anchored at the
next minute boundary M0; the window is [M0, M0 + minutes). Per minute of the
window, by the slot's `scheduled_for`: slots due, step-1 lateness (the agent's
first arrival of step 1 minus `scheduled_for`) p50 / p99 / max, misses (slots whose
step 1 never reached the agent; of them, the executions `skipped` by the overlap
policy and those still queued or running when the processes stop, --grace-s after
the window) and duplicates (step calls whose Idempotency-Key the agent saw again).
Every 10 s the RSS of every process of each Procfile group (the shell, the CLI and
its worker children) is read from /proc; once a minute the database's size and its
executions / step_runs rows. A row per minute is printed as it goes (counting the
calls so far); the recorded tables count every call.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
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
    stop_on_sigterm,
)
from testkit.processes import READY, Processes, processes

ROLES = ("scheduler", "dispatcher", "worker")
SAMPLE_S = 10  # RSS every 10 s; the database at the last sample of each minute
LIVE_AFTER_S = 20  # a minute's live row waits this long for its last slots' calls
GRACE_S = 30  # after the window, for the last slots' runs to reach the agent (--grace-s)
MIB = 1024 * 1024


# --- the window's calls, per minute (pure) -------------------------------------------


@dataclass
class Window:
    """The agent's calls bucketed by the minute of the window their slot falls in."""

    m0: float  # epoch seconds
    minutes: int
    due: int  # slots due each minute
    late: list[dict[str, float]] = field(default_factory=list)  # key -> first step-1 lateness
    calls: list[Counter[str]] = field(default_factory=list)  # key -> calls (every step)
    statuses: list[Counter[str]] = field(default_factory=list)  # the executions' at the end

    def __post_init__(self) -> None:
        self.late = [{} for _ in range(self.minutes)]
        self.calls = [Counter() for _ in range(self.minutes)]
        self.statuses = [Counter() for _ in range(self.minutes)]

    def add(self, call: tuple[float, str, str | None, int]) -> None:
        at, key, slot, step = call
        if slot is None:
            return
        scheduled = datetime.fromisoformat(slot).timestamp()
        minute = int((scheduled - self.m0) // 60)
        if not 0 <= minute < self.minutes:
            return
        self.calls[minute][key] += 1
        if step == 1:
            late = self.late[minute]
            late[key] = min(late.get(key, at - scheduled), at - scheduled)

    def minute(self, i: int) -> dict[str, float]:
        lateness = list(self.late[i].values())
        return {
            "due": self.due,
            **lateness_figures(lateness),
            "misses": self.due - len(lateness),
            "skipped": self.statuses[i]["skipped"],
            "unfinished": self.statuses[i]["queued"] + self.statuses[i]["running"],
            "duplicates": sum(n - 1 for n in self.calls[i].values()),
        }

    def summary(self) -> dict[str, float]:
        lateness = [v for late in self.late for v in late.values()]
        rows = [self.minute(i) for i in range(self.minutes)]
        return {
            "slots": self.due * self.minutes,
            **lateness_figures(lateness),
            "worst_minute_p99_s": max((r["late_p99_s"] for r in rows), default=float("nan")),
            **{k: sum(r[k] for r in rows) for k in ("misses", "skipped", "unfinished")},
            "duplicates": sum(r["duplicates"] for r in rows),
        }


def lateness_figures(lateness: list[float]) -> dict[str, float]:
    return {
        "late_p50_s": percentile(lateness, 50),
        "late_p99_s": percentile(lateness, 99),
        "late_max_s": max(lateness) if lateness else float("nan"),
    }


# --- processes' memory, from /proc ------------------------------------------------------


def stat_ids(stat: str) -> tuple[int, int]:
    """(parent pid, process group) from the text of /proc/PID/stat."""
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return int(fields[1]), int(fields[2])


def rss_bytes(status: str) -> int | None:
    """The resident set size from the text of /proc/PID/status (None for a zombie)."""
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def process_name(argv: list[str]) -> str:
    """What a process of a Procfile group is: `sh`, `respawn`, `periodiq`, `dramatiq`..."""
    words = [os.path.basename(w) for w in argv]
    if "stepwise" in words[:-1]:
        return words[words.index("stepwise") + 1]  # the CLI's command
    text_ = " ".join(argv)
    for part in ("forkserver", "resource_tracker", "spawn_main"):
        if part in text_:
            return part
    return words[0] if words else "?"


def group_rss(role: str, pgid: int, proc: Path = Path("/proc")) -> dict[str, int]:
    """RSS in bytes of each live process of process group `pgid`, as `role name pid`; a
    process forked by one of its name (dramatiq's worker processes) is `name child`."""
    found = {}  # pid -> (parent, name, rss)
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent, group = stat_ids((entry / "stat").read_text())
            if group != pgid:
                continue
            rss = rss_bytes((entry / "status").read_text())
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
        except (OSError, ValueError):  # it exited meanwhile
            continue
        if rss is not None:
            found[int(entry.name)] = (parent, process_name(argv), rss)
    names = {pid: name for pid, (_, name, _) in found.items()}
    return {
        f"{role} {name}{' child' if names.get(parent) == name else ''} {pid}": rss
        for pid, (parent, name, rss) in found.items()
    }


# --- samples, per minute (pure) -------------------------------------------------------------


@dataclass
class Samples:
    """RSS of every process every SAMPLE_S; the database once a minute."""

    m0: float
    rss: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    db: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    def in_minute(self, series: list[Any], i: int) -> list[Any]:
        start = self.m0 + 60 * i
        return [values for at, values in series if start <= at < start + 60]

    def processes(self) -> list[str]:
        seen = {label for _, values in self.rss for label in values}
        return sorted(seen, key=lambda label: (ROLES.index(label.split()[0]), len(label), label))

    def rss_minute(self, i: int) -> dict[str, tuple[int, int, int]]:
        """Per process: the first, last and largest RSS sampled in minute i."""
        taken = self.in_minute(self.rss, i)
        out = {}
        for label in self.processes():
            values = [s[label] for s in taken if label in s]
            if values:
                out[label] = (values[0], values[-1], max(values))
        return out

    def db_minute(self, i: int) -> dict[str, int]:
        taken = self.in_minute(self.db, i)
        return taken[-1] if taken else {}


def growth(samples: Samples, minutes: int) -> dict[str, float]:
    """Database size and rows before the window and after it, and bytes per run."""
    before, after = samples.db[0][1], samples.db[-1][1]
    runs = after["executions"] - before["executions"]
    in_window = [s for i in range(minutes) for s in samples.in_minute(samples.rss, i)]
    total = [sum(s.values()) for s in in_window]
    return {
        "db_before_mib": before["size"] / MIB,
        "db_after_mib": after["size"] / MIB,
        "executions": after["executions"],
        "step_runs": after["step_runs"],
        "bytes_per_run": (after["size"] - before["size"]) / runs if runs else float("nan"),
        "rss_first_mib": total[0] / MIB if total else float("nan"),
        "rss_last_mib": total[-1] / MIB if total else float("nan"),
        "rss_max_mib": max(total) / MIB if total else float("nan"),
    }


# --- the run --------------------------------------------------------------------------------


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


def database_sample() -> dict[str, int]:
    from db.session import session_scope

    with session_scope() as session:
        size, executions, step_runs = session.execute(
            text(
                "SELECT pg_database_size(current_database()),"
                " (SELECT count(*) FROM executions), (SELECT count(*) FROM step_runs)"
            )
        ).one()
    return {"size": size, "executions": executions, "step_runs": step_runs}


def execution_statuses(window: Window) -> None:
    """Count the window's executions per minute and status, into `window.statuses`."""
    from db.session import session_scope

    with session_scope() as session:
        rows = session.execute(
            text(
                """
                SELECT floor((extract(epoch FROM scheduled_for) - :m0) / 60) AS minute,
                    status, count(*)
                FROM executions
                WHERE scheduled_for >= to_timestamp(:m0)
                    AND scheduled_for < to_timestamp(:m0) + make_interval(mins => :minutes)
                GROUP BY 1, 2
                """
            ),
            {"m0": window.m0, "minutes": window.minutes},
        ).all()
    for minute, status, count in rows:
        window.statuses[int(minute)][status] += count


class CallsTail:
    """The agent's record file, read as the agent appends whole lines to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[tuple[float, str, str | None, int]]:
        import json

        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [tuple(json.loads(line)) for line in complete.splitlines()]  # type: ignore[misc]


def procfile_default(procs: Processes, variable: str) -> int:
    """The value a Procfile line gives `variable` (`${VARIABLE:-N}`), or the environment's."""
    if variable in os.environ:
        return int(os.environ[variable])
    match = re.search(r"\$\{" + variable + r":-(\d+)\}", procs.procfile["worker"])
    assert match, f"the Procfile's worker line has no default for {variable}"
    return int(match.group(1))


LIVE = (
    f"{'minute':>6} {'due':>6} {'p50 s':>7} {'p99 s':>7} {'max s':>7} {'misses':>6} {'dup':>4}"
    f" {'db MiB':>8} {'executions':>10} {'step_runs':>10} {'RSS MiB':>8}"
)


def live_row(i: int, window: Window, samples: Samples) -> str:
    m, db = window.minute(i), samples.db_minute(i)
    rss = sum(last for _, last, _ in samples.rss_minute(i).values())
    return (
        f"{i + 1:>6} {m['due']:>6} {m['late_p50_s']:>7.3f} {m['late_p99_s']:>7.3f}"
        f" {m['late_max_s']:>7.3f} {m['misses']:>6} {m['duplicates']:>4}"
        f" {db.get('size', 0) / MIB:>8.1f} {db.get('executions', 0):>10}"
        f" {db.get('step_runs', 0):>10} {rss / MIB:>8.1f}"
    )


def watch(
    procs: Processes, tail: CallsTail, window: Window, samples: Samples, grace_s: float
) -> None:
    """Sample every SAMPLE_S until the window's end plus `grace_s`; print each minute's row."""
    end = window.m0 + 60 * window.minutes
    printed = 0
    tick = window.m0 + SAMPLE_S * ((time.time() - window.m0) // SAMPLE_S + 1)
    print(LIVE, flush=True)
    while tick <= end + grace_s:
        time.sleep(max(0.0, tick - time.time()))
        rss: dict[str, int] = {}
        for role in ROLES:
            rss.update(group_rss(role, procs.running[role].pid))
        samples.rss.append((tick, rss))
        if (tick - window.m0) % 60 == 60 - SAMPLE_S:  # the last sample of each minute
            samples.db.append((tick, database_sample()))
        for call in tail.read():
            window.add(call)
        while printed < window.minutes and tick >= window.m0 + 60 * (printed + 1) + LIVE_AFTER_S:
            print(live_row(printed, window, samples), flush=True)
            printed += 1
        tick += SAMPLE_S


def run_once(
    servers: Any,
    *,
    cron: int,
    interval: int,
    minutes: int,
    latency_ms: float,
    worker_processes: int | None,
    worker_threads: int | None,
    grace_s: float,
) -> tuple[dict[str, float], Window, Samples]:
    with (
        bench_database(servers),
        agent_process(latency_ms, flush_s=1.0) as agent,
        processes() as procs,
    ):
        from db.session import db_now, session_scope

        with session_scope() as session:
            now = db_now(session)
        m0 = (now + timedelta(seconds=75)).replace(second=0, microsecond=0)
        create_schedules(cron, interval, agent.url, m0)
        samples = Samples(m0.timestamp())
        samples.db.append((time.time(), database_sample()))
        env = {}
        if worker_processes is not None:
            env["STEPWISE_WORKER_PROCESSES"] = str(worker_processes)
        if worker_threads is not None:
            env["STEPWISE_WORKER_THREADS"] = str(worker_threads)
        count = procfile_default(procs, "STEPWISE_WORKER_PROCESSES")
        procs.start("worker", **env)
        procs.start("dispatcher", **env)
        procs.wait_ready("worker", READY, count=worker_processes or count, timeout=60)
        procs.wait_ready("dispatcher", READY, timeout=60)
        procs.start("scheduler", **env)
        print(f"window {m0:%H:%M:%S} .. {m0 + timedelta(minutes=minutes):%H:%M:%S} UTC", flush=True)
        window = Window(m0.timestamp(), minutes, cron + interval * 6)
        tail = CallsTail(agent.record)
        watch(procs, tail, window, samples, grace_s)
        execution_statuses(window)
        procs.stop_all()
        agent.stop()
        for call in tail.read():
            window.add(call)
        samples.db.append((time.time(), database_sample()))
        return {**window.summary(), **growth(samples, minutes)}, window, samples


# --- the record -------------------------------------------------------------------------------


FIGURES = [
    ("slots", "slots in window"),
    ("late_p50_s", "step-1 late p50 (s)"),
    ("late_p99_s", "p99 (s)"),
    ("late_max_s", "max (s)"),
    ("worst_minute_p99_s", "worst minute's p99 (s)"),
    ("misses", "misses"),
    ("skipped", "of them skipped"),
    ("unfinished", "unfinished"),
    ("duplicates", "duplicates"),
    ("rss_first_mib", "RSS, all processes: first (MiB)"),
    ("rss_last_mib", "last (MiB)"),
    ("rss_max_mib", "max (MiB)"),
    ("db_before_mib", "database before (MiB)"),
    ("db_after_mib", "after (MiB)"),
    ("executions", "executions"),
    ("step_runs", "step_runs"),
    ("bytes_per_run", "bytes per run"),
]


def markdown(table: list[tuple[str, ...]]) -> str:
    header, *rows = table
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def minutes_table(window: Window, samples: Samples) -> list[tuple[str, ...]]:
    table = [
        (
            "minute",
            "slots due",
            "step-1 late p50 (s)",
            "p99 (s)",
            "max (s)",
            "misses",
            "skipped",
            "unfinished",
            "duplicates",
            "database (MiB)",
            "executions",
            "step_runs",
        )
    ]
    for i in range(window.minutes):
        m, db = window.minute(i), samples.db_minute(i)
        table.append(
            (
                str(i + 1),
                *(fmt(m[k]) for k in ("due", "late_p50_s", "late_p99_s", "late_max_s")),
                *(fmt(m[k]) for k in ("misses", "skipped", "unfinished", "duplicates")),
                fmt(db["size"] / MIB) if db else "-",
                fmt(db["executions"]) if db else "-",
                fmt(db["step_runs"]) if db else "-",
            )
        )
    return table


def rss_table(window: Window, samples: Samples) -> list[tuple[str, ...]]:
    labels = samples.processes()
    table = [("minute", *labels)]
    for i in range(window.minutes):
        per = samples.rss_minute(i)
        cells = (
            "/".join(f"{v / MIB:.1f}" for v in per[label]) if label in per else "-"
            for label in labels
        )
        table.append((str(i + 1), *cells))
    return table


def run_notes(n: int, window: Window, samples: Samples) -> str:
    return "\n\n".join(
        [
            f"Run {n}, per minute of the window (by the slot's `scheduled_for`; the database at "
            "the minute's last sample):",
            markdown(minutes_table(window, samples)),
            f"Run {n}, RSS per process in MiB, first / last / max of the {SAMPLE_S} s samples in "
            "the minute (`role command pid`):",
            markdown(rss_table(window, samples)),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_server_args(parser)
    parser.add_argument("--cron", type=int, default=1000, help="`* * * * *` schedules")
    parser.add_argument("--interval", type=int, default=1000, help="schedules every 10 s")
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--worker-processes", type=int, help="default: the Procfile's")
    parser.add_argument("--worker-threads", type=int, help="default: the Procfile's")
    parser.add_argument(
        "--grace-s", type=float, default=GRACE_S, help="after the window, for late runs"
    )
    args = parser.parse_args()
    stop_on_sigterm()
    started = machine()
    servers = start_servers(args)
    runs, notes = [], []
    try:
        for i in range(args.runs):
            figures, window, samples = run_once(
                servers,
                cron=args.cron,
                interval=args.interval,
                minutes=args.minutes,
                latency_ms=args.latency_ms,
                worker_processes=args.worker_processes,
                worker_threads=args.worker_threads,
                grace_s=args.grace_s,
            )
            print(f"run {i + 1}: " + ", ".join(f"{k}={fmt(v)}" for k, v in figures.items()))
            runs.append(figures)
            notes.append(run_notes(i + 1, window, samples))
    finally:
        servers.close()
    workers = (
        f"{args.worker_processes or 'the Procfile'} x {args.worker_threads or 'the Procfile'}"
        if args.worker_processes or args.worker_threads
        else "the Procfile's defaults"
    )
    rows = [(f"run {i + 1}", *(fmt(r[k]) for k, _ in FIGURES)) for i, r in enumerate(runs)]
    if len(runs) > 1:
        med = median_of(runs)
        rows.append(("median", *(fmt(med[k]) for k, _ in FIGURES)))
    report(
        f"bench.steady: {fmt(args.cron)} cron `* * * * *` + {fmt(args.interval)} every 10 s, "
        f"{args.minutes} min, agent {args.latency_ms:g} ms, workers {workers}",
        started,
        [("run", *(label for _, label in FIGURES)), *rows],
        notes="\n\n".join(notes),
    )


if __name__ == "__main__":
    main()
