"""What every benchmark shares: servers, a throwaway database, processes, figures, RESULTS.md.

Each run gets its own database (created on the PostgreSQL server, migrated with
`stepwise.cli.migrate`, dropped at the end) and an empty Redis database (FLUSHDB,
never FLUSHALL). Without a server URL the embedded servers are started instead.
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
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/4"
READY = "Worker process is ready for action"


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


def _sqlalchemy_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@dataclass
class Servers:
    server_url: str
    redis_url: str
    _stop: list[Any]

    def close(self) -> None:
        for stop in reversed(self._stop):
            stop()


def start_servers(args: argparse.Namespace) -> Servers:
    from stepwise import embedded

    stops: list[Any] = []
    tmp = Path(tempfile.mkdtemp(prefix="stepwise-bench-"))
    server = args.server_url
    if server == "embedded":
        server = embedded.start_postgres(tmp / "postgres")
    redis_url = args.redis_url
    if redis_url == "embedded":
        redis = embedded.start_redis(tmp / "redis", embedded.free_port(), persist=False)
        stops.append(redis.stop)
        redis_url = redis.url
    return Servers(_sqlalchemy_url(server), redis_url, stops)


@contextmanager
def bench_database(servers: Servers, *, keep: bool = False) -> Iterator[str]:
    """A fresh migrated database for one run, set as DATABASE_URL/REDIS_URL; dropped after."""
    import redis
    from sqlalchemy import create_engine, make_url, text

    from stepwise.cli import migrate
    from stepwise.settings import get_settings

    name = f"stepwise_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(servers.server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(servers.server_url).set(database=name).render_as_string(hide_password=False)
    client = redis.Redis.from_url(servers.redis_url)
    client.flushdb()
    os.environ.update(
        {"DATABASE_URL": url, "REDIS_URL": servers.redis_url, "STEPWISE_DEMO": "false"}
    )
    get_settings.cache_clear()
    _reset_engine()
    try:
        migrate(url)
        yield url
    finally:
        _reset_engine()
        client.flushdb()
        client.close()
        if not keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _reset_engine() -> None:
    from db.session import dispose_engine

    dispose_engine()


# --- processes ----------------------------------------------------------------------


class Processes:
    """Procfile processes (and helpers) as real subprocesses, each in its own group."""

    def __init__(self, log_dir: Path) -> None:
        from stepwise.cli import read_procfile

        self.log_dir = log_dir
        self.procfile = read_procfile()
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: str | None = None, **env: str) -> None:
        environment = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        self.running[name] = subprocess.Popen(
            command or self.procfile[name],
            shell=True,
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def wait_for(self, name: str, marker: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log(name).count(marker) >= count:
                return
            if self.running[name].poll() is not None:
                raise RuntimeError(f"{name} exited early:\n{self.log(name)[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"{name} not ready after {timeout} s:\n{self.log(name)[-3000:]}")

    def stop(self, name: str, timeout: float = 30) -> None:
        process = self.running.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


@contextmanager
def processes() -> Iterator[Processes]:
    log_dir = Path(tempfile.mkdtemp(prefix="stepwise-bench-logs-"))
    procs = Processes(log_dir)
    try:
        yield procs
    finally:
        procs.stop_all()
