"""The README's first command on a machine with no servers: `stepwise run`.

It starts embedded PostgreSQL and Redis under the data directory, migrates, starts
every Procfile process and the demo agent, seeds the demo automation, and a
succeeded demo execution with 3 succeeded steps lands within two minutes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from stepwise.embedded import free_port
from testkit.processes import metrics_ports

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


# As on a fresh machine: no servers, no allowlist (local mode allows the demo agent), no key.
UNSET = ("DATABASE_URL", "REDIS_URL", "STEPWISE_AGENT_ALLOW", "STEPWISE_SECRET_KEYS")


def _start(
    data_dir: Path, log: Path, api_port: int, demo_port: int | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(
        STEPWISE_DATA_DIR=str(data_dir),
        STEPWISE_WEB_PORT=str(free_port()),
        STEPWISE_API_PORT=str(api_port),
        STEPWISE_REDIS_PORT=str(free_port()),
        STEPWISE_DEMO_AGENT_PORT=str(demo_port or free_port()),
        STEPWISE_DEMO="true",
        STEPWISE_WORKER_PROCESSES="1",
        STEPWISE_WORKER_THREADS="2",
        **metrics_ports(),
    )
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "stepwise"), "run"],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _demo_state(url: str) -> tuple[int, int, int]:
    """(automations, succeeded executions with 3 succeeded steps, schedules)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            automations = conn.scalar(text("SELECT count(*) FROM automations")) or 0
            succeeded = (
                conn.scalar(
                    text(
                        "SELECT count(*) FROM executions e WHERE e.status = 'succeeded' AND "
                        "(SELECT count(*) FROM step_runs s WHERE s.execution_id = e.id "
                        " AND s.status = 'succeeded') = 3"
                    )
                )
                or 0
            )
            schedules = conn.scalar(text("SELECT count(*) FROM schedules")) or 0
            return automations, succeeded, schedules
    finally:
        engine.dispose()


def _stop(process: subprocess.Popen[bytes], log: Path) -> int:
    # Ctrl-C in a terminal: SIGINT to the whole foreground group.
    os.killpg(process.pid, signal.SIGINT)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"not stopped 60 s after Ctrl-C:\n{log.read_text()[-4000:]}") from None


def test_run_command_brings_up_the_system_on_embedded_servers(tmp_path: Path) -> None:
    # Not under pytest's tmp root: pytest resets that to 0700 when a session starts,
    # and the embedded server runs as its own system user when started by root.
    data_dir = Path(tempfile.mkdtemp(prefix="stepwise-run-")) / "data"
    log = tmp_path / "run.log"
    url = f"postgresql+psycopg://postgres@/postgres?host={data_dir.resolve() / 'postgres'}"
    api_port = free_port()
    process = _start(data_dir, log, api_port)
    try:
        deadline = time.monotonic() + 150
        state = (0, 0, 0)
        while time.monotonic() < deadline and state[1] < 1:
            assert process.poll() is None, log.read_text()[-4000:]
            time.sleep(2)
            if (data_dir / "postgres" / "postmaster.pid").exists():
                with contextlib.suppress(Exception):  # not migrated yet
                    state = _demo_state(url)
        assert state[1] >= 1, f"no succeeded demo execution in 150 s:\n{log.read_text()[-4000:]}"
        assert state[0] == 1 and state[2] == 1
        assert "dashboard at http://127.0.0.1:" in log.read_text()
        # and the REST API runs beside it, at the address printed next to the dashboard's
        assert f"API at http://127.0.0.1:{api_port}" in log.read_text()
        assert httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=5).status_code == 200
    finally:
        code = _stop(process, log)
    assert code in (0, 130), log.read_text()[-3000:]  # 130: stopped by Ctrl-C
    # the embedded servers stopped with it, and their data survives a restart
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    process = _start(data_dir, log, api_port)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if log.read_text().count("dashboard at") >= 2:
                break
            time.sleep(1)
        automations, succeeded, schedules = _demo_state(url)
        assert (automations, schedules) == (1, 1)  # not seeded twice
        assert succeeded >= 1
    finally:
        _stop(process, log)
        shutil.rmtree(data_dir.parent, ignore_errors=True)


def _stepwise(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """A `stepwise` command in `cwd` with nothing set: no servers, key, allowlist or data dir."""
    env = {k: v for k, v in os.environ.items() if k not in (*UNSET, "STEPWISE_DATA_DIR")}
    return subprocess.run(
        [str(Path(sys.executable).parent / "stepwise"), *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_command_reaches_what_stepwise_run_started_with_no_setup(tmp_path: Path) -> None:
    # given `stepwise run` on a fresh machine, its data in ./.data of the folder it runs in
    home = Path(tempfile.mkdtemp(prefix="stepwise-beside-"))
    data_dir = home / ".data"
    log = tmp_path / "run.log"
    demo_port = free_port()
    process = _start(data_dir, log, free_port(), demo_port)
    try:
        deadline = time.monotonic() + 120
        while "dashboard at" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(1)
        # when, in that folder with nothing set, one of yours on the demo agent is applied
        defs = home / "stepwise.yaml"
        defs.write_text(
            "automations:\n"
            "  - name: Mine\n"
            f"    agent_url: http://127.0.0.1:{demo_port}/agent\n"
            "    steps: [{name: one, message: Do it}]\n"
            "    schedules: [{kind: cron, cron_expr: '* * * * *'}]\n"
        )
        applied = _stepwise(home, "apply", "-f", str(defs))
        # then it is written, and the definitions and the history export read it back
        assert applied.returncode == 0, applied.stderr
        assert "+ automation 'Mine'" in applied.stdout
        exported = _stepwise(home, "export-defs")
        assert exported.returncode == 0, exported.stderr
        assert "name: Mine" in exported.stdout and "name: 'Demo:" in exported.stdout
        history = _stepwise(home, "export", "--out", str(home / "runs.csv"))
        assert history.returncode == 0, history.stderr
        # and the demo agent accepts its calls: a run of it succeeds
        url = f"postgresql+psycopg://postgres@/postgres?host={data_dir.resolve() / 'postgres'}"
        engine = create_engine(url)
        succeeded = text(
            "SELECT count(*) FROM executions e JOIN automations a ON a.id = e.automation_id "
            "WHERE a.name = 'Mine' AND e.status = 'succeeded'"
        )
        deadline = time.monotonic() + 150
        try:
            while True:
                with engine.connect() as conn:
                    if conn.scalar(succeeded):
                        break
                assert time.monotonic() < deadline, f"no succeeded run:\n{log.read_text()[-4000:]}"
                time.sleep(2)
        finally:
            engine.dispose()
    finally:
        _stop(process, log)
    # and once it stopped, a command no longer finds it, and says how to start it
    assert not (data_dir / "run.json").exists()
    alone = _stepwise(home, "export-defs")
    assert alone.returncode != 0 and "make run" in alone.stderr
    shutil.rmtree(home, ignore_errors=True)


def test_a_ctrl_c_before_every_process_has_started_stops_them_all(tmp_path: Path) -> None:
    # given the run command's process manager asked to stop before any pid is known
    # (a Ctrl-C in the first moments of `stepwise run`)
    marker = f"{time.time_ns() % 10**9}.5"
    script = f"""
import io, sys
from honcho.printer import Printer
from stepwise.cli import process_manager
manager = process_manager(Printer(io.StringIO()))
for name in ("web", "api", "worker"):
    manager.add_process(name, "exec sleep {marker}")
manager.terminate()
manager.loop()
print("stopped", manager.returncode)
"""
    # when it runs, then it stops every process once it has started, and returns
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.startswith("stopped"), done.stderr[-2000:]
    left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True)
    assert left.stdout == "", f"still running: {left.stdout}"


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.168.1.10", "dashboard.example.com"])
def test_the_dashboard_refuses_to_listen_beyond_loopback_without_login(address: str) -> None:
    # given the Procfile's web process asked to listen on a reachable address
    port = free_port()
    env = {**os.environ, "STEPWISE_WEB_ADDRESS": address, "PORT": str(port)}
    # when it starts
    done = subprocess.run(
        [str(Path(sys.executable).parent / "stepwise"), "web"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # then it refuses, saying which variable to change, and nothing listens
    assert done.returncode == 1
    assert "STEPWISE_WEB_ADDRESS" in done.stderr and "no login" in done.stderr
    with contextlib.closing(socket.socket()) as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_the_development_config_says_what_stepwise_web_sets() -> None:
    # `streamlit run dashboard/app.py` in the project reads .streamlit/config.toml;
    # `stepwise web` gives Streamlit dashboard/server.py's settings wherever it starts
    from dashboard.server import STREAMLIT_CONFIG

    written = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    flat = {f"{section}.{k}": v for section, values in written.items() for k, v in values.items()}
    assert flat == STREAMLIT_CONFIG
