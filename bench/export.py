"""Export: the whole history to CSV and to Parquet, seconds and peak RSS.

    python -m bench.export --executions 1000000 --runs 3

Each export runs `service.exports.write_history` (what the dashboard's Export page
and `stepwise export` call) in a fresh child process, so the peak RSS
(`ru_maxrss`) is that export's alone, imports included.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import ROOT, add_server_args, bench_database, fmt, machine, report, start_servers
from bench.dataset import generate

CHILD = """
import json, resource, sys, time
from core.access import DEFAULT_WORKSPACE_ID, Actor
from service.exports import write_history
from db.queries import ExecutionFilters
from db.session import session_scope
bench = Actor("bench", DEFAULT_WORKSPACE_ID)
started = time.perf_counter()
with session_scope() as session:
    rows = write_history(session, ExecutionFilters(), sys.argv[2], sys.argv[1], actor=bench)
seconds = time.perf_counter() - started
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mib": peak_mib}))
"""


def export_once(fmt_name: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="stepwise-bench-export-") as tmp:
        path = Path(tmp) / f"history.{fmt_name}"
        out = subprocess.run(
            [sys.executable, "-c", CHILD, fmt_name, str(path)],
            cwd=ROOT,
            env=os.environ.copy(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        figures = json.loads(out.strip().splitlines()[-1])
        figures["file_mib"] = path.stat().st_size / 2**20
        return figures


def time_exports(formats: list[str], runs: int) -> list[tuple[str, ...]]:
    rows = [
        (
            "format",
            "rows",
            "seconds (median)",
            "peak RSS MiB (median)",
            "file MiB",
            "< 15 s and < 1 GiB",
            "runs (s / MiB)",
        )
    ]
    for name in formats:
        results = [export_once(name) for _ in range(runs)]
        for r in results:
            print(name, r, flush=True)
        seconds = statistics.median(r["seconds"] for r in results)
        rss = statistics.median(r["peak_rss_mib"] for r in results)
        rows.append(
            (
                name,
                fmt(results[0]["rows"]),
                fmt(seconds),
                fmt(rss),
                fmt(results[0]["file_mib"]),
                "yes" if seconds < 15 and rss < 1024 else "**no**",
                "; ".join(f"{r['seconds']:.1f} / {r['peak_rss_mib']:.0f}" for r in results),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_server_args(parser)
    parser.add_argument("--executions", type=int, default=1_000_000)
    parser.add_argument("--formats", nargs="+", default=["csv", "parquet"])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    started = machine()
    servers = start_servers(args)
    try:
        with bench_database(servers):
            print(f"dataset: {generate(args.executions)}", flush=True)
            rows = time_exports(args.formats, args.runs)
    finally:
        servers.close()
    report(f"Export of {args.executions:,} executions (median of {args.runs} runs)", started, rows)


if __name__ == "__main__":
    main()
