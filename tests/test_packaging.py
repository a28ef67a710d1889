"""The Dockerfile, compose.yaml and app.json against the Procfile, so they cannot drift.

Base images cannot be pulled here: the Dockerfile is linted (hadolint, also in
`make lint`) and what the three files say is compared with the Procfile, process by
process: the same processes, the same commands, the same environment names.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from core.settings import Settings, variable_name
from stepwise.cli import read_procfile

ROOT = Path(__file__).resolve().parent.parent
SERVERS = {"postgres", "redis"}
# What Heroku's add-ons set (app.json's addons), and compose sets to its own servers.
FROM_ADDONS = {"DATABASE_URL", "REDIS_URL"}
SETTINGS = {variable_name(name) for name in Settings.model_fields}


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def _app() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ROOT / "app.json").read_text())
    return loaded


def _referenced(command: str) -> set[str]:
    """The environment variables a Procfile line reads (`${NAME:-default}`)."""
    return set(re.findall(r"\$\{(\w+)", command))


def test_compose_runs_every_procfile_process_with_its_own_command() -> None:
    procfile = read_procfile()
    services = _compose()["services"]

    assert set(services) == set(procfile) | SERVERS
    for name, command in procfile.items():
        # compose writes a literal $ as $$; the line runs in a shell, as Heroku runs it
        given = [part.replace("$$", "$") for part in services[name]["command"]]
        assert given == ["sh", "-c", command], name


def test_compose_migrates_first_and_every_process_waits_for_it() -> None:
    services = _compose()["services"]

    assert services["release"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in set(read_procfile()) - {"release"}:
        after = services[name]["depends_on"]["release"]["condition"]
        assert after == "service_completed_successfully", name
        assert services[name]["image"] == services["release"]["image"] == "stepwise"


def test_app_json_forms_every_procfile_process_but_the_release_phase() -> None:
    app = _app()

    assert set(app["formation"]) == set(read_procfile()) - {"release"}
    plans = {addon["plan"] for addon in app["addons"]}
    assert plans == {"heroku-postgresql", "heroku-redis"}


def test_compose_and_app_json_set_the_same_environment_names_and_only_known_ones() -> None:
    services = _compose()["services"]
    procfile = read_procfile()
    names = {name: set(services[name]["environment"]) for name in procfile}
    compose = names["release"]

    # every process is given the same names (one image, one configuration)
    assert all(given == compose for given in names.values()), names
    # the same as Heroku's, where the add-ons set the servers' URLs
    assert set(_app()["env"]) | FROM_ADDONS == compose
    # each one a setting Stepwise reads (a typo would be ignored silently)
    assert compose <= SETTINGS, compose - SETTINGS
    # and every variable a Procfile line reads is among them
    for command in procfile.values():
        assert _referenced(command) <= compose, command


def test_every_setting_compose_fills_from_the_host_is_one_app_json_asks_for() -> None:
    environment = _compose()["services"]["web"]["environment"]
    from_host = {name for name, value in environment.items() if str(value).startswith("${")}
    app_env = _app()["env"]

    assert from_host <= set(app_env)
    assert app_env["STEPWISE_SECRET_KEYS"]["required"] is True


def test_the_dockerfile_passes_hadolint_and_runs_as_no_root() -> None:
    hadolint = str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run(
        [hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stdout + done.stderr
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM ", text, re.MULTILINE)
    assert len(stages) >= 2  # multi-stage: the build tools stay out of the image
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    assert "--constraint requirements.lock" in text
