"""Metrics (tasks/metrics.py, api/metrics.py, `stepwise metered`): what each call counts,
where each process serves them, that docs/METRICS.md names every one, and, end to end, that
a real Prometheus scraping the Procfile's processes counts what the database holds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.error
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from prometheus_client import generate_latest
from sqlalchemy import func, select

from core.outcome import StepOutcome
from db.models import Execution, StepRun
from db.session import db_now, session_scope
from stepwise.cli import fresh_metrics_dir, read_procfile
from stepwise.demo_agent import Call, Reply, default_reply
from stepwise.embedded import free_port
from testkit.factories import make_automation, make_execution, make_schedule
from testkit.processes import METRICS_PORTS, READY, metrics_port, metrics_url
from testkit.prometheus import RULES, metric, prometheus_server
from testkit.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "METRICS.md"
METRIC = re.compile(r"\b((?:stepwise|dramatiq)_[a-z_]+)")


def _documented() -> set[str]:
    return {m.group(1) for m in re.finditer(r"^\| `([a-z_]+)` \|", DOC.read_text(), re.M)}


def _exported(text: str) -> set[str]:
    """Metric names of an exposition, as documented (histograms and counters whole)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            counter = kind == "counter" and not name.endswith("_total")
            names.add(name + "_total" if counter else name)
    return names


# --- what is counted ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable", "error", "labels"),
    [
        (200, False, None, ("succeeded", "2xx")),
        (503, True, "HTTP 503", ("retryable", "5xx")),
        (429, True, "HTTP 429", ("retryable", "4xx")),
        (None, True, "timed out", ("retryable", "none")),
        (404, False, "HTTP 404", ("failed", "4xx")),
        (None, False, "refused", ("failed", "none")),
    ],
)
def test_a_call_is_labelled_by_outcome_and_status_class(
    status: int | None, retryable: bool, error: str | None, labels: tuple[str, str]
) -> None:
    from tasks.metrics import call_outcome

    outcome = StepOutcome(error is None, retryable, status, None, error, 12)
    assert call_outcome(outcome) == labels


def test_only_a_scheduled_slot_has_a_lateness() -> None:
    from tasks.metrics import first_call

    before = metric("stepwise_slot_lateness_seconds_count")
    late = metric("stepwise_slot_lateness_seconds_bucket", le="5.0")
    # a scheduled run calls 3 s after its slot; catch-up, backfill and manual runs call late
    first_call("schedule", 1000.0, 1003.0)
    for trigger in ("catchup", "backfill", "manual", "webhook", "retry"):
        first_call(trigger, 1000.0, 5000.0)
    assert metric("stepwise_slot_lateness_seconds_count") == before + 1
    assert metric("stepwise_slot_lateness_seconds_bucket", le="5.0") == late + 1


# --- where they are served --------------------------------------------------------------------


def test_a_metered_group_gets_an_empty_folder_and_dead_groups_lose_theirs(tmp_path: Path) -> None:
    # given the folders of a dead worker group, of a live one, and our own pid's old one
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f"worker-{dead.pid}").mkdir()
    (tmp_path / f"worker-{dead.pid}" / "counter_1.db").write_bytes(b"old")
    live = tmp_path / f"worker-{os.getppid()}"
    live.mkdir()
    dispatcher = tmp_path / f"dispatcher-{dead.pid}"
    dispatcher.mkdir()
    (tmp_path / f"worker-{os.getpid()}").mkdir()
    (tmp_path / f"worker-{os.getpid()}" / "counter_2.db").write_bytes(b"reused pid")
    # when a worker group starts
    folder = fresh_metrics_dir(tmp_path, "worker", os.getpid())
    # then its folder is empty, the dead group's is gone, the live one and other roles stay
    assert folder == tmp_path / f"worker-{os.getpid()}" and list(folder.iterdir()) == []
    assert not (tmp_path / f"worker-{dead.pid}").exists()
    assert live.exists() and dispatcher.exists()


def test_the_procfile_starts_the_worker_and_the_dispatcher_metered() -> None:
    procfile = read_procfile()
    for role in ("worker", "dispatcher"):
        assert f"stepwise metered {role} -- dramatiq " in procfile[role]


@pytest.mark.slow
def test_the_api_serves_its_metrics_apart_and_answers_without_them_if_their_port_is_taken(
    db: None, redis_client: Any, tmp_path: Path
) -> None:
    from testkit.api import start_api

    # given the api process on its own metrics port
    metrics_port = free_port()
    (tmp_path / "second").mkdir()
    api = start_api(tmp_path, STEPWISE_API_METRICS_PORT=str(metrics_port))
    try:
        # then its metrics answer there, on 127.0.0.1, and not on the API's port
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            assert b"stepwise_database_up 1.0" in r.read()
        assert _listening(metrics_port) == {"127.0.0.1"}
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"{api.url}/metrics", timeout=10)
        # and a second api process whose metrics port is taken still answers, saying why
        second = start_api(tmp_path / "second", STEPWISE_API_METRICS_PORT=str(metrics_port))
        try:
            assert "STEPWISE_API_METRICS_PORT" in second.log()
        finally:
            second.stop()
    finally:
        api.stop()


def test_api_requests_are_counted_by_route_template_not_path(client: Any) -> None:
    from api.metrics import REGISTRY

    def count(route: str, status: str) -> float:
        labels = {"route": route, "method": "GET", "status": status}
        return REGISTRY.get_sample_value("stepwise_api_requests_total", labels) or 0.0

    before = count("/v1/executions/{execution_id}", "401"), count("<unmatched>", "404")
    # when two executions' pages and two unknown paths are asked for
    for path in ("/v1/executions/1", "/v1/executions/2", "/wp-admin/a", "/wp-admin/b"):
        client.get(path)
    # then they count under the route's template, and one name for every unknown path
    after = count("/v1/executions/{execution_id}", "401"), count("<unmatched>", "404")
    assert after == (before[0] + 2, before[1] + 2)
    # and the API's own port serves no metrics
    assert client.get("/metrics").status_code == 404


def test_the_api_scrape_says_what_the_servers_say(db: None, redis_client: Any) -> None:
    from api.metrics import REGISTRY

    text = generate_latest(REGISTRY).decode()
    assert "stepwise_database_up 1.0" in text
    assert "stepwise_redis_up 1.0" in text
    assert 'stepwise_queue_messages{queue="default",state="queued"} 0.0' in text


def test_every_metric_and_only_those_are_documented(db: None, redis_client: Any) -> None:
    import tasks.metrics  # noqa: F401 - registers the workers' metrics
    from api.metrics import REGISTRY

    ours = _exported(generate_latest(prometheus_client.REGISTRY).decode())
    ours |= _exported(generate_latest(REGISTRY).decode())
    ours = {name for name in ours if name.startswith("stepwise_")}
    documented = _documented()
    assert ours == {name for name in documented if name.startswith("stepwise_")}
    # and what the alerts and the dashboard query is documented
    for path in (RULES / "alerts.yml", RULES / "grafana-dashboard.json"):
        used = {re.sub(r"_(bucket|count|sum)$", "", m) for m in METRIC.findall(path.read_text())}
        assert used <= documented, f"{path.name}: {used - documented}"


# --- end to end -----------------------------------------------------------------------------


def _responder(call: Call) -> Reply:
    """The agent: automations whose URL ends in /reject are refused (422), /busy fail with 503."""
    if call.path.endswith("/reject"):
        return Reply(422, {"error": "not this one"})
    if call.path.endswith("/busy"):
        return Reply(503, {"error": "busy"})
    return default_reply(call)


def _database_counts() -> dict[str, float]:
    with session_scope() as session:
        by_status = dict(
            session.execute(select(Execution.status, func.count()).group_by(Execution.status)).all()
        )
        calls = session.scalar(
            select(func.count()).select_from(StepRun).where(StepRun.finished_at.is_not(None))
        )
        slots = session.scalar(
            select(func.count())
            .select_from(Execution)
            .where(Execution.trigger == "schedule", Execution.started_at.is_not(None))
        )
    return {
        "succeeded": by_status.get("succeeded", 0),
        "failed": by_status.get("failed", 0),
        "calls": calls or 0,
        "slots": slots or 0,
    }


def _scraped(prometheus: Any) -> dict[str, float]:
    def total(expr: str) -> float:
        return prometheus.value(f"sum({expr})") or 0.0

    return {
        "succeeded": total('stepwise_runs_total{status="succeeded"}'),
        "failed": total('stepwise_runs_total{status="failed"}'),
        "calls": total("stepwise_step_call_duration_seconds_count"),
        "slots": total("stepwise_slot_lateness_seconds_count"),
    }


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_real_prometheus_counts_what_the_database_holds(
    procs: Any, agent: Any, tmp_path: Path
) -> None:
    from db.runs import RunMessage
    from tasks.send import send_run

    # given the Procfile's api, worker and dispatcher, and Prometheus scraping them each second
    agent.responder = _responder
    api = f"http://127.0.0.1:{free_port()}"
    procs.start("api", STEPWISE_API_PORT=api.rpartition(":")[2])
    procs.start("worker")
    procs.start("dispatcher")
    procs.wait_ready("worker", READY, timeout=120)
    procs.wait_ready("dispatcher", READY, timeout=120)
    jobs = {f"stepwise-{role}": metrics_port(procs, role) for role in METRICS_PORTS}
    with prometheus_server(jobs, tmp_path / "prometheus") as prometheus:
        wait_for(
            lambda: set(prometheus.targets().values()) == {"up"},
            timeout=90,
            message="Prometheus to scrape every process",
            details=lambda: str(prometheus.targets()),
        )
        # when the API is asked for an execution without a token, twice
        procs.wait_http("api", f"{api}/health")
        for _ in range(2):
            with pytest.raises(urllib.error.HTTPError, match="401"):
                urllib.request.urlopen(f"{api}/v1/executions/{uuid.uuid4()}", timeout=10)
        # and three slots come due (2 steps each), and 3 runs fail: rejected, or busy twice
        good = make_automation(agent_url=agent.url, steps=2)
        with session_scope() as session:
            run_at = db_now(session) + timedelta(seconds=6)
        for n in range(3):
            make_schedule(good, kind="once", run_at=run_at + timedelta(seconds=n))
        rejected = make_automation(agent_url=f"{agent.url}/reject", steps=1, max_retries=0)
        busy = make_automation(agent_url=f"{agent.url}/busy", steps=1, max_retries=1)
        for automation_id, retries in ((rejected, 0), (rejected, 0), (busy, 1)):
            send_run(RunMessage(make_execution(automation_id), retries))
        procs.start("scheduler")  # periodiq sends a first tick as it starts
        wait_for(
            lambda: (c := _database_counts())["succeeded"] == 3 and c["failed"] == 3,
            timeout=180,
            message="3 runs to succeed and 3 to fail",
            details=lambda: str(_database_counts()),
        )
        expected = _database_counts()
        assert expected == {"succeeded": 3, "failed": 3, "calls": 10, "slots": 3}
        # then Prometheus has counted the same runs, calls and slots
        wait_for(
            lambda: _scraped(prometheus) == expected,
            timeout=60,
            message="Prometheus's counts to match the database's",
            details=lambda: f"scraped {_scraped(prometheus)}, database {expected}",
        )
        # and the calls by outcome, the slots dispatched, the api's view of the servers (a
        # scrape slower than the interval leaves a gap in the series: wait for the next)
        wanted = {
            "calls": {("succeeded", "2xx"): 6, ("failed", "4xx"): 2, ("retryable", "5xx"): 2},
            "dispatched": 3,
            "database up": 1,
            "default workers": 1,
            "messages counted": True,
            "heartbeat fresh": True,
            "unauthorized reads": 2,
        }
        wait_for(
            lambda: _views(prometheus) == wanted,
            timeout=60,
            message="Prometheus to see the calls, slots, servers and workers",
            details=lambda: str(_views(prometheus)),
        )
        # and every query of the Grafana dashboard is one Prometheus runs, and finds series
        dashboard = json.loads((RULES / "grafana-dashboard.json").read_text())
        queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
        wait_for(
            lambda: not [q for q in queries if not prometheus.query(q)],
            timeout=60,
            message="every dashboard query to find series",
            details=lambda: str([q for q in queries if not prometheus.query(q)]),
        )
        # and every metrics port listens on this machine only
        for role in METRICS_PORTS:
            assert _listening(metrics_port(procs, role)) == {"127.0.0.1"}
        with urllib.request.urlopen(metrics_url(procs, "worker"), timeout=5) as response:
            assert b"stepwise_runs_in_flight" in response.read()


def _views(prometheus: Any) -> dict[str, Any]:
    calls = prometheus.query(
        "sum by (outcome, code) (stepwise_step_call_duration_seconds_count) > 0"
    )
    age = prometheus.value('stepwise_scheduler_heartbeat_age_seconds{tick="dispatch"}')
    return {
        "calls": {
            (r["metric"]["outcome"], r["metric"]["code"]): float(r["value"][1]) for r in calls
        },
        "dispatched": prometheus.value('sum(stepwise_dispatch_slots_total{outcome="dispatched"})'),
        "database up": prometheus.value("stepwise_database_up"),
        "default workers": prometheus.value('stepwise_worker_processes{queue="default"}'),
        "messages counted": bool(
            prometheus.value('sum(dramatiq_messages_total{actor_name="run_execution"})')
        ),
        "heartbeat fresh": age is not None and age < 120,
        "unauthorized reads": prometheus.value(
            'stepwise_api_requests_total{route="/v1/executions/{execution_id}",status="401"}'
        ),
    }


def _listening(port: int) -> set[str]:
    """The local addresses with a socket listening on `port` (from `ss`)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
    return {line.split()[3].rpartition(":")[0] for line in out.stdout.splitlines() if line}
