"""Overhead against the limit: Stepwise's step calls/s over a plain httpx loop's.

    python -m bench.overhead --n 1000 --latency-ms 0 50 --runs 3

Within each run, the same agent (a fresh recording agent process at the same
latency) gets 3 x N calls twice: from a plain httpx loop with the workers' shape
(processes x threads, no queue, no database), then from Stepwise's real worker
and dispatcher processes running N 3-step executions (burst `ahead` mode: the
runs wait as delayed messages and all become due at once). The ratio is taken
within the run; the table gives the medians.
"""

from __future__ import annotations

import argparse
import statistics

from bench import burst
from bench.agentproc import agent_process, httpx_baseline
from bench.common import add_server_args, fmt, machine, report, start_servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_server_args(parser)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 50.0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--worker-threads", type=int, default=8)
    args = parser.parse_args()
    started = machine()
    servers = start_servers(args)
    rows = [
        (
            "agent ms",
            "calls",
            "concurrency",
            "httpx calls/s",
            "Stepwise calls/s",
            "ratio",
            ">= 80 %",
            "ratios per run",
        )
    ]
    try:
        for latency in args.latency_ms:
            results = []
            for i in range(args.runs):
                with agent_process(latency) as agent:
                    base = httpx_baseline(
                        agent.url,
                        calls=3 * args.n,
                        processes=args.worker_processes,
                        threads=args.worker_threads,
                    )
                figures = burst.run_once(
                    servers,
                    n=args.n,
                    latency_ms=latency,
                    mode="ahead",
                    lead_s=10,
                    worker_processes=args.worker_processes,
                    worker_threads=args.worker_threads,
                    timeout=900,
                )
                ours = figures["calls_per_s"]
                results.append((base, ours, ours / base))
                print(
                    f"agent={latency}ms run {i + 1}: httpx {base:.1f}/s, stepwise {ours:.1f}/s",
                    flush=True,
                )
            ratio = statistics.median(r[2] for r in results)
            rows.append(
                (
                    fmt(latency),
                    fmt(3 * args.n),
                    f"{args.worker_processes} x {args.worker_threads}",
                    fmt(statistics.median(r[0] for r in results)),
                    fmt(statistics.median(r[1] for r in results)),
                    f"{ratio:.0%}",
                    "yes" if ratio >= 0.8 else "**no**",
                    ", ".join(f"{r[2]:.0%}" for r in results),
                )
            )
    finally:
        servers.close()
    report(f"Overhead (median of {args.runs} runs)", started, rows)


if __name__ == "__main__":
    main()
