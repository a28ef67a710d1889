"""deploy/prometheus/: the alert rules pass `promtool test rules` (series that fire each alert
and series that do not), and the shipped Prometheus configuration is valid."""

from __future__ import annotations

import yaml

from core.settings import Settings
from testkit.processes import METRICS_PORTS
from testkit.prometheus import RULES, promtool, require_prometheus


def test_every_alert_fires_on_its_series_and_not_on_the_others() -> None:
    require_prometheus()
    done = promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_test_that_fires_it() -> None:
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"] if "alert" in r}
    tests = yaml.safe_load((RULES / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    assert alerts == fired == quiet


def test_the_shipped_prometheus_configuration_is_valid_and_scrapes_this_machine() -> None:
    require_prometheus()
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((RULES / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
        for job in config["scrape_configs"]
    }
    # each metered process, on this machine, at its default port
    fields = Settings.model_fields
    assert targets == {
        f"stepwise-{role}": [f"127.0.0.1:{fields[f'{role}_metrics_port'].default}"]
        for role in METRICS_PORTS
    }
