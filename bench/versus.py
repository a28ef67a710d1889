"""Stepwise and BullMQ side by side: same agent, same N, one after the other, K times each.

    python -m bench.versus                                  # 50@0, 1000@0, 1000@1000; K=3
    python -m bench.versus --scenario 10000@0               # the 10,000-run burst
    python -m bench.versus --scenario 1000@0 --runs 1 --profile /tmp/prof
    python -m bench.versus --kind cron oneoff               # and the one-off fast path, labelled

A scenario is `N@DELAY_MS`: N three-step runs all due at one instant, against an agent
that answers each call after DELAY_MS. Each round runs the BullMQ peer
(`../shared/peers/bullmq/run.sh burst N`, 2 workers x concurrency 50) and then
Stepwise (the Procfile's `worker` and `dispatcher` with their defaults), never at
the same time. Both call the same agent process (`peers/agent/server.js`, started
once on a free port and reconfigured per scenario), and both rows come from the
peer's own analysis (`peers/bench/analyze.js`) of that agent's dump, so the two
systems are measured by one definition:

- step-1 lateness: per execution, the first arrival of step 1 minus the due instant;
- makespan: the due instant to the last 200-answered step-3 arrival;
- step calls/s: calls for the due instant / (last arrival - due instant);
- duplicates: 200-answered calls beyond the first per (execution, step) (for
  Stepwise also the executions beyond N in the database); missing: N minus the
  executions whose three steps were all answered 200.

Stepwise is driven only through its processes and its database, so the harness
measures whatever design those run. With `--kind cron` (the default) it makes
what a user makes and what BullMQ's side makes (N `* * * * *` job schedulers):
N cron `* * * * *` schedules with the default misfire and overlap policies (overlap
`skip`, so every run takes the overlap check), whose slot T is the next minute
boundary with room to set up; the `dispatch` tick is sent `--lead-s` before T,
by default 60 s, as the scheduler sends it at the minute before (the 90 s dispatch
horizon holds the slot as a delayed message until T, as BullMQ holds a delayed
job). `--kind oneoff` is the fast path, an extra row labelled `Stepwise (one-off)`:
one-off schedules due at T (nothing can overlap one, so no overlap check), with
the tick `--lead-s` before T (default by N). `--profile DIR` records each Stepwise
worker process with py-spy during the first Stepwise run of every scenario and
prints its top frames.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.burst import KINDS, OF_SLOT, create_schedules, db_scalar, due_instant
from bench.common import (
    ROOT,
    Servers,
    add_server_args,
    bench_database,
    fmt,
    machine,
    report,
    start_servers,
    stop_on_sigterm,
)
from bench.cost import COUNTING, per_step, snapshot
from bench.profile import Profiler
from stepwise.embedded import free_port
from testkit.processes import READY, processes

PEERS = Path(os.environ.get("BENCH_PEERS", ROOT.parent / "shared" / "peers"))
DEFAULT_SCENARIOS = ["50@0", "1000@0", "1000@1000"]
# The scheduler's tick before a `* * * * *` slot: the minute boundary before it.
SCHEDULER_LEAD_S = 60.0
# Past this, a system is reported with what it finished (BullMQ's own cap is 150 s).
CAP_S = 900.0

COST_NOTES: list[str] = []
FIGURES = [
    ("late_p50_s", "step-1 late p50 (s)"),
    ("late_p99_s", "step-1 late p99 (s)"),
    ("makespan_s", "makespan (s)"),
    ("calls_per_s", "step calls/s"),
    ("duplicates", "duplicates"),
    ("missing", "missing"),
]


# --- the shared agent ---------------------------------------------------------------


class Agent:
    """The peers' agent (`agent/server.js`), started once, reconfigured per scenario."""

    def __init__(self, port: int, process: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.process = process
        self.base = f"http://127.0.0.1:{port}"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return bytes(response.read())

    def configure(self, delay_ms: float) -> None:
        self._call("POST", "/config", {"delay_ms": delay_ms, "fail_rate": 0})

    def reset(self) -> None:
        self._call("POST", "/reset", {})

    def analyse(self, *, due_ms: int, n: int) -> dict[str, Any]:
        """The peer's analysis of everything the agent recorded since the last reset."""
        with tempfile.NamedTemporaryFile(suffix=".ndjson", delete=False) as dump:
            dump.write(self._call("GET", "/dump"))
        try:
            out = subprocess.run(
                [
                    "node",
                    str(PEERS / "bench" / "analyze.js"),
                    "--due-ms",
                    str(due_ms),
                    "--n",
                    str(n),
                    "--dump",
                    dump.name,
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        finally:
            os.unlink(dump.name)
        return dict(json.loads(out))


@contextmanager
def shared_agent() -> Iterator[Agent]:
    port = free_port()
    log = open(Path(tempfile.gettempdir()) / f"stepwise-versus-agent-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        ["node", str(PEERS / "agent" / "server.js")],
        env={**os.environ, "AGENT_PORT": str(port), "AGENT_HOST": "127.0.0.1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    agent = Agent(port, process)
    try:
        for _ in range(100):
            try:
                agent._call("GET", "/health")
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"the peers' agent did not start on port {port}")
        yield agent
    finally:
        process.terminate()
        process.wait(30)
        log.close()


# --- the two systems ----------------------------------------------------------------


def figures_of(analysis: dict[str, Any], *, extra_duplicates: int = 0) -> dict[str, float]:
    late = analysis["step1_lateness_ms"]
    makespan = analysis["makespan_ms"]

    def seconds(ms: float | None) -> float:
        return float("nan") if ms is None else ms / 1000

    return {
        "late_p50_s": seconds(late["p50"]),
        "late_p99_s": seconds(late["p99"]),
        "makespan_s": seconds(makespan),
        "calls_per_s": float(analysis["step_calls_per_s"] or float("nan")),
        "duplicates": analysis["duplicate_step_calls"] + extra_duplicates,
        "missing": analysis["missing_executions"],
    }


def run_bullmq(agent: Agent, *, n: int, delay_ms: float) -> dict[str, float]:
    """One `run.sh burst N` against the shared agent; its own JSON line, analysed by the peer."""
    with tempfile.NamedTemporaryFile(suffix=".ndjson", delete=False) as out:
        path = Path(out.name)
    env = {
        **os.environ,
        "AGENT_PORT": str(agent.port),
        "AGENT_DELAY_MS": fmt_ms(delay_ms),
        "OUT": str(path),
        "BENCH_QUEUE": "stepwise-versus",  # not the queue of someone running the peer by hand
    }
    try:
        subprocess.run(
            [str(PEERS / "bullmq" / "run.sh"), "burst", str(n)],
            env=env,
            stdout=subprocess.DEVNULL,
            check=True,
            timeout=400,
        )
        line = path.read_text().strip().splitlines()[-1]
    finally:
        path.unlink(missing_ok=True)
    result = json.loads(line)
    figures = figures_of(result["analysis"])
    steps = result["analysis"]["step_calls"] or 1
    cpu = result.get("cpu_ms") or {}
    figures["cost"] = {  # type: ignore[assignment]
        "worker_cpu_ms": cpu.get("workers_total", float("nan")) / steps,
        "redis_cpu_ms": cpu.get("redis", float("nan")) / steps,
    }
    return figures


def fmt_ms(ms: float) -> str:
    return str(int(ms)) if float(ms).is_integer() else str(ms)


def worker_processes() -> int:
    """The Procfile's default number of worker processes (what `stepwise run` starts)."""
    from stepwise.cli import read_procfile

    found = re.search(
        r"--processes\s+\$\{STEPWISE_WORKER_PROCESSES:-(\d+)\}", read_procfile()["worker"]
    )
    return int(found.group(1)) if found else 1


def wait_done(n: int, due: datetime, deadline: float) -> None:
    while time.monotonic() < deadline:
        done = db_scalar(
            f"SELECT count(*) FROM executions WHERE {OF_SLOT} "
            "AND status NOT IN ('queued', 'running')",
            due=due,
        )
        if done >= n:
            return
        time.sleep(0.5)


def run_stepwise(
    servers: Servers,
    agent: Agent,
    *,
    n: int,
    delay_ms: float,
    lead_s: float,
    profile_to: Path | None,
    kind: str = "cron",
    cost: bool = False,
) -> dict[str, float]:
    """One burst of `kind` schedules (`bench.burst.KINDS`) through the Procfile's worker
    and dispatcher, analysed from the agent's dump."""
    with bench_database(servers), processes() as procs:
        import redis

        from db.session import db_now, session_scope
        from tasks.actors import dispatch

        count = worker_processes()
        counts_dir = Path(tempfile.mkdtemp(prefix="stepwise-versus-counts-"))
        env = {}
        if cost:
            path = os.pathsep.join([str(COUNTING), os.environ.get("PYTHONPATH", "")])
            env = {"PYTHONPATH": path, "STEPWISE_BENCH_COUNTS": str(counts_dir)}
        procs.start("worker", **env)
        procs.start("dispatcher")
        procs.wait_ready("worker", READY, count=count, timeout=60)
        procs.wait_ready("dispatcher", READY, timeout=60)
        with session_scope() as session:
            now = db_now(session)
        # A whole second: the agent reads `scheduled_for` back to milliseconds.
        due = due_instant(now, kind=kind, room_s=lead_s + 3 + n / 5000)
        create_schedules(n, f"{agent.base}/step", due, kind=kind)
        agent.configure(delay_ms)
        agent.reset()
        time.sleep(max(0.0, due.timestamp() - lead_s - time.time()))
        dispatch.send()
        worker_pid = procs.running["worker"].pid
        client = redis.Redis.from_url(servers.redis_url)
        before = snapshot(worker_pid, counts_dir, client) if cost else None
        profiler = Profiler(worker_pid, profile_to) if profile_to else None
        try:
            wait_done(n, due, time.monotonic() + lead_s + CAP_S)
        finally:
            if profiler:
                profiler.stop()
        after = None
        if before is not None:
            time.sleep(0.6)  # the workers write their counts every 0.5 s
            after = snapshot(worker_pid, counts_dir, client)
        client.close()
        procs.stop_all()
        executions = db_scalar(f"SELECT count(*) FROM executions WHERE {OF_SLOT}", due=due)
        analysis = agent.analyse(due_ms=int(due.timestamp() * 1000), n=n)
        figures = figures_of(analysis, extra_duplicates=max(0, executions - n))
        if figures["duplicates"]:
            print(f"  why steps were called again: {called_again()}", flush=True)
        if before is not None and after is not None:
            figures["cost"] = per_step(before, after, analysis["step_calls"] or 1)  # type: ignore[assignment]
        return figures


def called_again() -> list[tuple[Any, ...]]:
    """The errors of the step runs that did not succeed (a step called twice was first
    lost, timed out or answered in a way that was retried), counted."""
    from db.session import session_scope

    with session_scope() as session:
        rows = session.execute(
            text(
                "SELECT step_number, attempt, coalesce(error, '') AS error, count(*) "
                "FROM step_runs WHERE status <> 'succeeded' "
                "GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 10"
            )
        ).all()
    return [tuple(r) for r in rows]


# --- the comparison -----------------------------------------------------------------


def parse_scenario(text: str) -> tuple[int, float]:
    n, _, delay = text.partition("@")
    return int(n), float(delay or 0)


def ratio(a: float, b: float) -> str:
    if b == 0 or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}"


def contenders(systems: list[str], kinds: list[str]) -> dict[str, str | None]:
    """Row label -> the Stepwise schedule kind it runs (None: BullMQ), in running order."""
    rows: dict[str, str | None] = {"BullMQ": None} if "BullMQ" in systems else {}
    if "Stepwise" in systems:
        for kind in kinds:
            rows["Stepwise" if kind == "cron" else "Stepwise (one-off)"] = kind
    return rows


def lead_of(lead_s: float | None, *, kind: str, n: int) -> float:
    """How long before T the tick is sent: the scheduler's minute for cron slots (unless
    `--lead-s` says otherwise), and enough to dispatch N for one-offs."""
    if lead_s is not None:
        return lead_s
    return SCHEDULER_LEAD_S if kind == "cron" else max(10.0, 5 + 2 * n / 1000)


def compare(
    servers: Servers, agent: Agent, *, n: int, delay_ms: float, args: argparse.Namespace
) -> list[tuple[str, ...]]:
    rows_of = contenders(args.systems, args.kind)
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in rows_of}
    for k in range(args.runs):
        for system, kind in rows_of.items():
            load = os.getloadavg()[0]
            if kind is None:
                figures = run_bullmq(agent, n=n, delay_ms=delay_ms)
            else:
                profile_to = (
                    args.profile / f"n{n}-d{fmt_ms(delay_ms)}-{kind}"
                    if args.profile and k == 0
                    else None
                )
                figures = run_stepwise(
                    servers,
                    agent,
                    n=n,
                    delay_ms=delay_ms,
                    lead_s=lead_of(args.lead_s, kind=kind, n=n),
                    profile_to=profile_to,
                    kind=kind,
                    cost=args.cost,
                )
            figures["load"] = load
            print(f"N={n} agent={delay_ms}ms {system} run {k + 1}: {figures}", flush=True)
            runs[system].append(figures)
    rows = table_rows(n, delay_ms, runs)
    for system, rs in runs.items():
        costs = [r["cost"] for r in rs if "cost" in r]
        if costs:
            med_cost = {
                k: statistics.median(c[k] for c in costs)
                for k, v in costs[0].items()
                if isinstance(v, float)
            }
            shown = ", ".join(f"{k} {fmt(v)}" for k, v in med_cost.items())
            top = "; ".join(str(c.get("redis_top", "")) for c in costs if c.get("redis_top"))
            COST_NOTES.append(
                f"- cost per step call, N={fmt(n)} at {fmt(delay_ms)} ms, {system}"
                f" (median of {len(costs)}): {shown}" + (f" (Redis: {top})" if top else "")
            )
    return rows


def table_rows(
    n: int, delay_ms: float, runs: dict[str, list[dict[str, Any]]]
) -> list[tuple[Any, ...]]:
    """The table's rows for one scenario: each system's medians of FIGURES with its runs'
    makespans and loads, then each system's ratios to BullMQ's (`bench.graphs` too)."""
    medians = {
        s: {k: statistics.median(r[k] for r in rs) for k, _ in FIGURES} for s, rs in runs.items()
    }
    rows: list[tuple[Any, ...]] = []
    for system, med in medians.items():
        per_run = "; ".join(
            f"{fmt(r['makespan_s'])} s @ load {r['load']:.1f}" for r in runs[system]
        )
        rows.append((fmt(n), fmt(delay_ms), system, *(fmt(med[k]) for k, _ in FIGURES), per_run))
    for system in medians:
        if system != "BullMQ" and "BullMQ" in medians:
            ratios = (ratio(medians[system][k], medians["BullMQ"][k]) for k, _ in FIGURES)
            rows.append((fmt(n), fmt(delay_ms), f"{system} / BullMQ", *ratios, ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_server_args(parser)
    parser.add_argument(
        "--scenario", nargs="+", default=DEFAULT_SCENARIOS, help="N@AGENT_DELAY_MS, e.g. 10000@0"
    )
    parser.add_argument(
        "--systems", nargs="+", choices=("BullMQ", "Stepwise"), default=["BullMQ", "Stepwise"]
    )
    parser.add_argument(
        "--kind",
        nargs="+",
        choices=KINDS,
        default=["cron"],
        help="Stepwise's schedules: cron (a user's `* * * * *`, default); oneoff (the fast path)",
    )
    parser.add_argument("--runs", type=int, default=3, help="rounds per scenario (K)")
    parser.add_argument(
        "--lead-s",
        type=float,
        default=None,
        help="dispatch tick this long before T (default: 60 s for cron, by N for one-offs)",
    )
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the workers into DIR")
    parser.add_argument(
        "--cost",
        action="store_true",
        help="per step: worker and Postgres CPU, statements, Redis commands (bench/cost.py)",
    )
    args = parser.parse_args()
    stop_on_sigterm()
    started = machine()
    servers = start_servers(args)
    table = [
        ("N", "agent ms", "system", *(label for _, label in FIGURES), "per run: makespan @ load"),
    ]
    try:
        with shared_agent() as agent:
            for scenario in args.scenario:
                n, delay_ms = parse_scenario(scenario)
                table += compare(servers, agent, n=n, delay_ms=delay_ms, args=args)
    finally:
        servers.close()
    report(
        f"Stepwise vs BullMQ (medians of {args.runs}; same agent, one after the other)",
        started,
        table,
        notes="\n".join(
            [
                "BullMQ 6.7: 2 workers x concurrency 50 (`peers/bullmq/run.sh`). Stepwise: the "
                "Procfile's defaults. Both analysed by `peers/bench/analyze.js` from one agent's "
                "dump.",
                *COST_NOTES,
            ]
        ),
    )


if __name__ == "__main__":
    main()
