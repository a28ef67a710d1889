"""Start the Procfile's processes as real subprocesses, as production runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stepwise.cli import read_procfile

ROOT = Path(__file__).resolve().parent.parent


class Processes:
    """Procfile processes started for one test; all stopped at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.procfile = read_procfile()

    def start(
        self, name: str, *, as_name: str | None = None, **env: str
    ) -> subprocess.Popen[bytes]:
        key = as_name or name
        environment = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "STEPWISE_WORKER_PROCESSES": "1",
            "STEPWISE_WORKER_THREADS": "4",
            **env,
        }
        log = open(self.log_dir / f"{key}.log", "ab")  # noqa: SIM115 - lives with the process
        process = subprocess.Popen(
            self.procfile[name],
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

    def wait_ready(self, key: str, marker: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.log(key):
                return
            if self.running[key].poll() is not None:
                raise AssertionError(f"{key} exited early:\n{self.log(key)[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{key} not ready after {timeout} s:\n{self.log(key)[-3000:]}")
