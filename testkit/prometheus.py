"""Debian's Prometheus and promtool in tests: a real server scraping our processes on
127.0.0.1, in its own folder on a free port, and the rule tests of `deploy/prometheus/`."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from stepwise.embedded import free_port

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
MISSING = (
    f"Prometheus tests skipped: {PROMETHEUS} or {PROMTOOL} is missing (`make test` installs "
    "Debian's prometheus when it runs as root; or apt-get install prometheus)"
)


def prometheus_missing() -> str | None:
    """Why the Prometheus tests cannot run here (one line), or None where they can."""
    return None if PROMETHEUS.exists() and PROMTOOL.exists() else MISSING


def require_prometheus() -> None:
    """Skip the test where Prometheus is missing; in CI (CI=true), where it must be, fail it."""
    why = prometheus_missing()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def metric(name: str, **labels: str) -> float:
    """A sample of this process's metrics (a worker or tick run in the test), 0 if none yet."""
    import prometheus_client

    return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """`promtool ARGS` in deploy/prometheus/, its output captured."""
    return subprocess.run(
        [str(PROMTOOL), *args], cwd=RULES, capture_output=True, text=True, timeout=120
    )


class Prometheus:
    """A running Prometheus server and its HTTP API."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to now (the API's `result`)."""
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(address, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value `expr` evaluates to now, or None when it has no series."""
        found = self.query(expr)
        assert len(found) <= 1, f"{expr} has {len(found)} series: {found}"
        return float(found[0]["value"][1]) if found else None

    def targets(self) -> dict[str, str]:
        """Each scrape job's health (`up`, `down`, `unknown`), as Prometheus sees it."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as response:
            active = json.load(response)["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in active}


@contextmanager
def prometheus_server(
    jobs: dict[str, int], folder: Path, *, scrape_ms: int = 1000
) -> Iterator[Prometheus]:
    """Prometheus scraping each job's `http://127.0.0.1:<port>/metrics` (`jobs`: name ->
    port) every `scrape_ms`, with deploy/prometheus/alerts.yml loaded, its data in `folder`."""
    require_prometheus()
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": f"{scrape_ms}ms", "evaluation_interval": f"{scrape_ms}ms"},
        "rule_files": [str(RULES / "alerts.yml")],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in jobs.items()
        ],
    }
    (folder / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log = folder / "prometheus.log"
    process = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _wait_ready(server: Prometheus, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{server.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"prometheus not ready in {timeout} s:\n{server.log.read_text()[-3000:]}")
