"""A workflow graph, Stepwise and BullMQ's FlowProducer side by side: same agent, same N.

    python -m bench.graphs                                  # 1,000 runs at 0 ms, K=3
    python -m bench.graphs --n 50 --runs 1                  # a quick check
    python -m bench.graphs --delay-ms 1000 --kind oneoff cron

N runs of one graph, all due at one instant T: a root step, a 10-way fan-out whose
every step reads the root's output (part i of the list the root answered), and a join
that needs the ten: 12 agent calls a run, against an agent that answers each after
DELAY_MS. Each round runs BullMQ (`bench/flows/flow.js`: 2 workers x concurrency 50,
as the peer's) and then Stepwise (the Procfile's `worker` and `dispatcher` with their
defaults), never at the same time, against one agent process (`peers/agent/server.js`
of `BENCH_PEERS`), and both rows come from the peers' `bench/analyze.js` on its dump,
as in `bench.versus`: step-1 lateness is the root's, makespan runs to the last join.

The fan-out is ten parallel steps (`fan_0`..`fan_9`, each needing `root` and reading
`steps.root.output.echo.input.parts[i]`), not a `for_each`: BullMQ's flow is a tree of
ten named child jobs, each its own job, id and retries, which is what ten parallel steps
are; and the agent tells calls apart by (execution, step number) only, so ten steps
numbered 2..11 let `analyze.js` count completion and duplicates of every call for both
systems alike (a `for_each`'s ten items share one step number: 9 false duplicates a run).

Stepwise: one graph automation and N schedules of it, made through the product's own
functions in one unit of work (`service.definitions.apply`, as `stepwise apply` does:
the graph checked as a save checks it, audit rows, the early dispatch after commit),
one-off schedules due at T by default (`--kind cron`: `* * * * *`, T the next minute
boundary with room); the `dispatch` tick is sent `--lead-s` before T as in
`bench.versus`. The workspace's quotas are raised first, as an admin would: a benchmark
measures the workers, not the quotas. BullMQ: N root jobs delayed to T; a root's worker
calls the agent and adds the run's flow with FlowProducer (the join as the parent, the
ten fan-out jobs as its children, each given the root's answer); see `flow.js`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from datetime import datetime
from typing import Any

from bench.burst import KINDS, OF_SLOT, db_scalar, due_instant, open_quotas
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
from bench.versus import (
    FIGURES,
    PEERS,
    Agent,
    called_again,
    figures_of,
    lead_of,
    shared_agent,
    table_rows,
    wait_done,
    worker_processes,
)
from testkit.processes import READY, processes

FLOWS = ROOT / "bench" / "flows"
FAN = 10
QUOTA = 100_000_000
# Past this after T, a system is reported with what it finished.
CAP_S = 150.0


# --- the graph ------------------------------------------------------------------------


def graph_steps(fan: int = FAN) -> list[dict[str, Any]]:
    """The graph in its plain form: `root` answers a list of `fan` parts (the agent echoes
    the root's input), `fan_<i>` reads part i of it, `join` needs every `fan_<i>`."""
    fans = [f"fan_{i}" for i in range(fan)]
    return [
        {
            "key": "root",
            "message": "plan the parts",
            "input": {"parts": [f"part {i}" for i in range(fan)]},
        },
        *(
            {
                "key": key,
                "needs": ["root"],
                "message": f"read {{{{ steps.root.output.echo.input.parts[{i}] }}}}",
            }
            for i, key in enumerate(fans)
        ),
        {"key": "join", "needs": fans, "message": f"join the {fan} parts"},
    ]


def create_graph_schedules(n: int, agent_url: str, due: datetime, *, kind: str) -> None:
    """One graph automation and N schedules of `kind` whose first slot is `due`, through
    the product's functions in one unit of work, as `stepwise apply` writes them."""
    from core.automation import AutomationInput, steps_of
    from core.schedule import ScheduleInput, parse_schedule
    from core.settings import get_settings
    from core.timing import ScheduleSpec
    from core.vocabulary import ScheduleKind
    from db.session import session_scope
    from service import automations, schedules
    from service.definitions import apply
    from service.unit import Unit

    with session_scope() as session:
        open_quotas(session, QUOTA)
    spec = (
        ScheduleSpec(kind=ScheduleKind.CRON, cron_expr="* * * * *")
        if kind == "cron"
        else ScheduleSpec(kind=ScheduleKind.ONCE, run_at=due)
    )
    definition = parse_schedule(
        ScheduleInput(spec=spec), retention_days=get_settings().retention_days
    )
    data = AutomationInput(
        name="graph bench",
        agent_url=agent_url,
        steps=steps_of(graph_steps()),
        project_context="benchmark",
        step_timeout_s=30,
        max_retries=3,
    )

    def write(unit: Unit) -> None:
        automation = automations.create_in(unit, data)
        for _ in range(n):
            schedules.create_in(unit, automation.id, definition)

    apply(write, person=None)


# --- the two systems --------------------------------------------------------------------


def pinned_bullmq() -> str:
    return str(json.loads((FLOWS / "package.json").read_text())["dependencies"]["bullmq"])


def node_env() -> dict[str, str]:
    """Where `flow.js` finds BullMQ: its own node_modules (`npm install` of its pinned
    version, made here when missing), or the peer's when that holds the same version."""
    if (FLOWS / "node_modules" / "bullmq").is_dir():
        return {}
    pinned = pinned_bullmq()
    peer = PEERS / "bullmq" / "node_modules"
    installed = peer / "bullmq" / "package.json"
    if installed.is_file() and json.loads(installed.read_text())["version"] == pinned:
        return {"NODE_PATH": str(peer)}
    subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=FLOWS, check=True)
    return {}


def run_bullmq(agent: Agent, *, servers: Servers, n: int, delay_ms: float) -> dict[str, float]:
    """One `flow.js burst` against the shared agent, analysed from the agent's dump."""
    agent.configure(delay_ms)
    agent.reset()
    env = {
        **os.environ,
        **node_env(),
        "AGENT_URL": agent.base,
        "REDIS_URL": servers.redis_url,
        "BENCH_QUEUE": "stepwise-flows",
    }
    out = subprocess.run(
        ["node", str(FLOWS / "flow.js"), "burst", "--n", str(n), "--cap-s", str(CAP_S)],
        env=env,
        stdout=subprocess.PIPE,  # its JSON line; progress goes to stderr, shown
        text=True,
        check=True,
        timeout=300,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["anomalies"]:
        print(f"  BullMQ anomalies: {result['anomalies']}", flush=True)
    analysis = agent.analyse(due_ms=result["due_ms"], n=n)
    figures = figures_of(analysis)
    steps = analysis["step_calls"] or 1
    figures["cost"] = {"worker_cpu_ms": result["cpu_ms"]["workers_total"] / steps}  # type: ignore[assignment]
    return figures


def run_stepwise(
    servers: Servers, agent: Agent, *, n: int, delay_ms: float, lead_s: float, kind: str
) -> dict[str, float]:
    """N runs of the graph from `kind` schedules, through the Procfile's worker and
    dispatcher, analysed from the agent's dump."""
    with bench_database(servers), processes() as procs:
        from db.session import db_now, session_scope
        from tasks.actors import dispatch

        procs.start("worker")
        procs.start("dispatcher")
        procs.wait_ready("worker", READY, count=worker_processes(), timeout=60)
        procs.wait_ready("dispatcher", READY, timeout=60)
        agent.configure(delay_ms)
        agent.reset()
        with session_scope() as session:
            now = db_now(session)
        # Making them through the product takes about 10 ms a schedule: room for that.
        due = due_instant(now, kind=kind, room_s=lead_s + 3 + n / 100)
        started = time.monotonic()
        create_graph_schedules(n, f"{agent.base}/step", due, kind=kind)
        made_s = time.monotonic() - started
        ahead = due.timestamp() - time.time()
        print(f"  {n} schedules made in {made_s:.1f} s, {ahead:.1f} s before T", flush=True)
        time.sleep(max(0.0, due.timestamp() - lead_s - time.time()))
        dispatch.send()
        wait_done(n, due, time.monotonic() + max(0.0, due.timestamp() - time.time()) + CAP_S)
        procs.stop_all()
        executions = db_scalar(f"SELECT count(*) FROM executions WHERE {OF_SLOT}", due=due)
        analysis = agent.analyse(due_ms=int(due.timestamp() * 1000), n=n)
        figures = figures_of(analysis, extra_duplicates=max(0, executions - n))
        if figures["duplicates"]:
            print(f"  why steps were called again: {called_again()}", flush=True)
        return figures


# --- the comparison ---------------------------------------------------------------------


def compare(
    servers: Servers, agent: Agent, *, n: int, delay_ms: float, args: argparse.Namespace
) -> tuple[list[tuple[str, ...]], list[str]]:
    rows_of: dict[str, str | None] = {"BullMQ": None}
    for kind in args.kind:
        rows_of["Stepwise" if kind == "oneoff" else "Stepwise (cron)"] = kind
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in rows_of}
    for k in range(args.runs):
        for system, kind in rows_of.items():
            load = os.getloadavg()[0]
            if kind is None:
                figures = run_bullmq(agent, servers=servers, n=n, delay_ms=delay_ms)
            else:
                lead_s = lead_of(args.lead_s, kind=kind, n=n)
                figures = run_stepwise(
                    servers, agent, n=n, delay_ms=delay_ms, lead_s=lead_s, kind=kind
                )
            figures["load"] = load
            print(f"graph N={n} agent={delay_ms}ms {system} run {k + 1}: {figures}", flush=True)
            runs[system].append(figures)
    rows = table_rows(n, delay_ms, runs)
    notes = []
    costs = [r["cost"] for r in runs["BullMQ"] if "cost" in r]
    if costs:
        cpu = statistics.median(c["worker_cpu_ms"] for c in costs)  # type: ignore[index]
        notes.append(f"- BullMQ workers' CPU per call, N={fmt(n)}: {fmt(cpu)} ms")
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_server_args(parser)
    parser.add_argument("--n", type=int, default=1000, help="runs of the graph (N)")
    parser.add_argument("--delay-ms", type=float, default=0, help="the agent's delay per call")
    parser.add_argument("--runs", type=int, default=3, help="rounds (K)")
    parser.add_argument(
        "--kind",
        nargs="+",
        choices=KINDS,
        default=["oneoff"],
        help="Stepwise's schedules: oneoff (default: due at T, as BullMQ's delayed roots); cron",
    )
    parser.add_argument(
        "--lead-s",
        type=float,
        default=None,
        help="dispatch tick this long before T (default: 60 s for cron, by N for one-offs)",
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
            rows, notes = compare(servers, agent, n=args.n, delay_ms=args.delay_ms, args=args)
            table += rows
    finally:
        servers.close()
    report(
        f"Workflow graph: Stepwise vs BullMQ FlowProducer (medians of {args.runs}; "
        "root + 10-way fan-out + join, 12 calls a run; same agent, one after the other)",
        started,
        table,
        notes="\n".join(
            [
                f"BullMQ {pinned_bullmq()} FlowProducer (`bench/flows/flow.js`): N root "
                "jobs delayed to T, each root's worker adding its flow (join parent, 10 "
                "fan-out children); 2 workers x concurrency 50. Stepwise: one graph "
                "automation, N schedules, the Procfile's defaults. Both analysed by "
                "`peers/bench/analyze.js` from one agent's dump (step 1 = the root, makespan "
                "to the last join).",
                *notes,
            ]
        ),
    )


if __name__ == "__main__":
    main()
