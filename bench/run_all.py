"""Every scenario, one after the other (`make bench`); each appends to bench/RESULTS.md.

    python -m bench.run_all            # the issue's sizes (about an hour on 2 cores; the
                                       # steady hour is `python -m bench.steady` alone)
    python -m bench.run_all --quick    # smaller sizes, a few minutes: a smoke run
    python -m bench.run_all --only burst export

Server options (--server-url, --redis-url, or the BENCH_DATABASE_URL /
BENCH_REDIS_URL variables) are passed to every scenario.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from bench.common import ROOT, add_server_args

FULL = {
    "agent_capacity": ["--calls", "6000", "--latency-ms", "0", "50"],
    "burst": ["--n", "1000", "5000", "10000", "--latency-ms", "0", "50"],
    "overhead": ["--n", "1000", "--latency-ms", "0", "50"],
    "steady": [
        "--cron",
        "500",
        "--interval",
        "200",
        "--minutes",
        "5",
        "--latency-ms",
        "0",
        "--runs",
        "3",
    ],
    "dashboard": ["--executions", "1000000"],
    "export": ["--executions", "1000000"],
    "versus": ["--scenario", "50@0", "1000@0", "1000@1000", "10000@0"],
    "dispatch_scale": ["--n", "100000"],
}
QUICK = {
    "agent_capacity": ["--calls", "2000", "--runs", "1", "--threads", "8"],
    "burst": ["--n", "500", "--runs", "1"],
    "overhead": ["--n", "300", "--runs", "1", "--latency-ms", "50"],
    "steady": ["--cron", "50", "--interval", "20", "--minutes", "1", "--runs", "1"],
    "dashboard": ["--executions", "50000", "--rounds", "1", "--repeat", "5"],
    "export": ["--executions", "50000", "--runs", "1"],
    "versus": ["--scenario", "50@0", "--runs", "1"],
    "dispatch_scale": ["--n", "10000", "--runs", "1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_server_args(parser)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=sorted(FULL))
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    servers = ["--server-url", args.server_url, "--redis-url", args.redis_url]
    failed = []
    for name, scenario_args in plan.items():
        if args.only and name not in args.only:
            continue
        extra = [] if name == "agent_capacity" else servers
        command = [sys.executable, "-m", f"bench.{name}", *scenario_args, *extra]
        print(f"\n=== {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, cwd=ROOT).returncode != 0:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
