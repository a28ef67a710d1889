"""What every benchmark shares: servers, a throwaway database, figures, RESULTS.md.

Each run gets its own database (created on the PostgreSQL server, migrated,
dropped at the end; `testkit.servers`) and an empty Redis database (FLUSHDB, never
FLUSHALL). Without a server URL the embedded servers are started instead. The
Procfile's processes run through `testkit.processes`, as in the tests.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.secrets import new_key
from testkit.servers import create_database, drop_database, postgres_server, redis_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/4"


# --- figures --------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per figure, the median over the runs."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def fmt(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return f"{int(value):,}"
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"


# --- machine and provenance ---------------------------------------------------------


def machine() -> str:
    cores = os.cpu_count()
    with open("/proc/meminfo") as f:
        total_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cores} cores, {total_kb / 1024 / 1024:.1f} GiB RAM, load average at start {load}"


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = " (+ uncommitted changes)" if git("status", "--porcelain", "--", ".", ":!bench") else ""
    return git("rev-parse", "--short", "HEAD") + dirty


def command_line() -> str:
    module = sys.argv[0]
    rel = Path(module).resolve()
    if rel.suffix == ".py" and ROOT in rel.parents:
        module = "-m " + ".".join(rel.relative_to(ROOT).with_suffix("").parts)
    return "python " + " ".join([module, *map(shlex.quote, sys.argv[1:])])


def report(title: str, started_machine: str, table: list[tuple[str, ...]], notes: str = "") -> None:
    """Print the figures and append them to bench/RESULTS.md."""
    header, *rows = table
    lines = [
        f"### {title}",
        "",
        f"- command: `{command_line()}`",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}, commit {git_commit()}",
        f"- machine: {started_machine}",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    if notes:
        lines += [notes, ""]
    text = "\n".join(lines)
    print("\n" + text)
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nAppended by the scripts in `bench/`.\n\n")
    with RESULTS.open("a") as f:
        f.write(text + "\n")


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so a stopped benchmark stops its processes and drops its
    database (a background job started by a shell ignores SIGINT)."""

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


# --- servers ------------------------------------------------------------------------


def add_server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_SERVER),
        help="PostgreSQL server to create the run's database on ('embedded' to start one)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS),
        help="Redis database to FLUSHDB and use ('embedded' to start one)",
    )


@dataclass
class Servers:
    server_url: str
    redis_url: str
    _stop: list[Any]

    def close(self) -> None:
        for stop in reversed(self._stop):
            stop()


def start_servers(args: argparse.Namespace) -> Servers:
    tmp = Path(tempfile.mkdtemp(prefix="stepwise-bench-"))
    server = postgres_server(None if args.server_url == "embedded" else args.server_url, tmp)
    redis_url, redis = redis_server(None if args.redis_url == "embedded" else args.redis_url, tmp)
    return Servers(server, redis_url, [redis.stop] if redis else [])


@contextmanager
def bench_database(servers: Servers, *, keep: bool = False) -> Iterator[str]:
    """A fresh migrated database for one run, set as DATABASE_URL/REDIS_URL; dropped after."""
    import redis

    from core.settings import get_settings
    from db.session import dispose_engine

    url = create_database(servers.server_url, prefix="stepwise_bench")
    client = redis.Redis.from_url(servers.redis_url)
    client.flushdb()
    os.environ.update(
        {
            "DATABASE_URL": url,
            "REDIS_URL": servers.redis_url,
            "STEPWISE_DEMO": "false",
            "STEPWISE_AGENT_ALLOW": "127.0.0.1",  # the benchmark's agent runs here
            "STEPWISE_SECRET_KEYS": os.environ.get("STEPWISE_SECRET_KEYS") or new_key(),
        }
    )
    get_settings.cache_clear()
    dispose_engine()
    try:
        yield url
    finally:
        dispose_engine()
        client.flushdb()
        client.close()
        if not keep:
            drop_database(url)
