"""The Procfile's processes as real subprocesses, as production runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stepwise.cli import read_procfile

ROOT = Path(__file__).resolve().parent.parent
# What a dramatiq process logs once its workers consume (worker and dispatcher).
READY = "Worker process is ready for action"


class Processes:
    """Procfile processes started for one test or benchmark run, each in its own group."""

    def __init__(self, log_dir: Path, **env: str) -> None:
        self.log_dir = log_dir
        self.env = env  # added to every process's environment
        # Each process's metrics ports (`metrics_port`): free ones unless given, so that two
        # groups of one role, or suites side by side on one machine, never share one.
        self.ports: dict[str, dict[str, str]] = {}
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.procfile = read_procfile()

    def start(
        self, name: str, *, as_name: str | None = None, command: str | None = None, **env: str
    ) -> subprocess.Popen[bytes]:
        """Start Procfile process `name` (or `command`), known as `as_name` if given."""
        key = as_name or name
        environment = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            **metrics_ports(),
            **self.env,
            **env,
        }
        self.ports[key] = {k: environment[k] for k in METRICS_VARIABLES}
        log = open(self.log_dir / f"{key}.log", "ab")  # noqa: SIM115 - lives with the process
        process = subprocess.Popen(
            command or self.procfile[name],
            shell=True,
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running[key] = process
        return process

    def log(self, key: str) -> str:
        return (self.log_dir / f"{key}.log").read_text(errors="replace")

    def signal(self, key: str, signum: int) -> None:
        """Send a signal to the whole process group (shell, CLI and its worker children)."""
        os.killpg(self.running[key].pid, signum)

    def stop(self, key: str, *, timeout: float = 30) -> int:
        process = self.running.pop(key)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        return process.returncode

    def kill(self, key: str) -> None:
        process = self.running.pop(key)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)

    def stop_all(self) -> None:
        for key in list(self.running):
            self.stop(key)

    def wait_ready(self, key: str, marker: str, *, count: int = 1, timeout: float = 30) -> None:
        """Wait until `marker` appears `count` times in the log; fail if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log(key).count(marker) >= count:
                return
            if self.running[key].poll() is not None:
                raise AssertionError(f"{key} exited early:\n{self.log(key)[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{key} not ready after {timeout} s:\n{self.log(key)[-3000:]}")

    def wait_http(self, key: str, url: str, *, timeout: float = 60) -> None:
        """Wait until GET `url` answers 200; fail with the log if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if answers(url):
                return
            if self.running[key].poll() is not None:
                raise AssertionError(f"{key} exited early:\n{self.log(key)[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"{key} did not answer {url} in {timeout} s:\n{self.log(key)[-3000:]}")


METRICS_PORTS = ("api", "worker", "dispatcher")
METRICS_VARIABLES = tuple(f"STEPWISE_{role.upper()}_METRICS_PORT" for role in METRICS_PORTS)


def metrics_ports() -> dict[str, str]:
    """A free metrics port for each process that serves metrics, as settings variables."""
    from stepwise.embedded import free_port

    return {variable: str(free_port()) for variable in METRICS_VARIABLES}


def metrics_port(procs: Processes, role: str, key: str | None = None) -> int:
    """The metrics port of `role` (api, worker, dispatcher) in the process started as `key`
    (default: the role's name)."""
    return int(procs.ports[key or role][METRICS_VARIABLES[METRICS_PORTS.index(role)]])


def metrics_url(procs: Processes, role: str) -> str:
    """Where the metrics of the process started as `role` answer."""
    return f"http://127.0.0.1:{metrics_port(procs, role)}/metrics"


def answers(url: str) -> bool:
    """Whether GET `url` answers 200 within two seconds."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:  # refused, timed out, or an HTTP error status
        return False


@contextmanager
def worker_in_process(*, threads: int, stop_timeout_ms: int = 10_000) -> Iterator[Any]:
    """A real dramatiq Worker for the run queue on the real Redis broker, in this process."""
    import dramatiq

    from tasks.actors import broker
    from tasks.broker import RUN_QUEUE, URGENT_QUEUE

    worker = dramatiq.Worker(
        broker, worker_threads=threads, worker_timeout=100, queues={RUN_QUEUE, URGENT_QUEUE}
    )
    worker.start()
    try:
        yield worker
    finally:
        worker.stop(timeout=stop_timeout_ms)


@contextmanager
def processes(**env: str) -> Iterator[Processes]:
    """Processes logging to a fresh temporary folder; all stopped on exit."""
    procs = Processes(Path(tempfile.mkdtemp(prefix="stepwise-logs-")), **env)
    try:
        yield procs
    finally:
        procs.stop_all()


def group_alive(pgid: int) -> bool:
    """Whether any process of the group (shell, dramatiq, its worker children) still runs."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False
