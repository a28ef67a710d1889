"""The bundled agent alone: calls per second a plain httpx loop gets from it.

    python -m bench.agent_capacity --calls 6000 --latency-ms 0 50

Run at the workers' concurrency (processes x threads, default 2 x 8, as the
Procfile) and at twice that, to show whether the agent saturates before Stepwise
could. No queue, no database: this is the ceiling any Stepwise figure is compared to.
"""

from __future__ import annotations

import argparse
import statistics

from bench.agentproc import agent_process, httpx_baseline
from bench.common import fmt, machine, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=6000)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 50.0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    started = machine()
    rows = [("agent latency (ms)", "concurrency", "calls", "calls/s (median)", "runs")]
    for latency in args.latency_ms:
        for threads in args.threads:
            per_run = []
            with agent_process(latency) as agent:
                for _ in range(args.runs):
                    per_run.append(
                        httpx_baseline(
                            agent.url, calls=args.calls, processes=args.processes, threads=threads
                        )
                    )
            rows.append(
                (
                    fmt(latency),
                    f"{args.processes} x {threads}",
                    fmt(args.calls),
                    fmt(statistics.median(per_run)),
                    ", ".join(fmt(x) for x in per_run),
                )
            )
            print(rows[-1], flush=True)
    report("Agent alone (plain httpx, no queue, no database)", started, rows)


if __name__ == "__main__":
    main()
