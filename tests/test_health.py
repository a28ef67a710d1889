"""`/health`, `/ready` (`service.health`) and `stepwise doctor`, on the real `api` process.

The API runs on a Redis of the test's own (embedded), which the test stops: the
machine's Redis is never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import time_machine
from sqlalchemy import text, update

from db.dispatch import beat
from db.health import head_revision
from db.models import Heartbeat
from db.session import db_now, session_scope
from stepwise import doctor, embedded
from testkit.processes import ROOT


def _tick(age: timedelta) -> None:
    """The scheduler's dispatch tick, `age` ago by PostgreSQL's clock."""
    with session_scope() as session:
        beat(session, "dispatch")
        at = db_now(session) - age
        session.execute(update(Heartbeat).where(Heartbeat.name == "dispatch").values(at=at))


@pytest.mark.slow
def test_ready_turns_not_ready_when_the_tick_is_stale_and_when_redis_stops(
    db: None, procs: Any, tmp_path: Path
) -> None:
    # given the Procfile's api on a Redis of the test's own, and a fresh scheduler tick
    redis = embedded.start_redis(tmp_path / "redis", embedded.free_port(), persist=False)
    api = f"http://127.0.0.1:{embedded.free_port()}"
    try:
        procs.start("api", STEPWISE_API_PORT=api.rsplit(":", 1)[1], REDIS_URL=redis.url)
        procs.wait_http("api", f"{api}/health")
        _tick(timedelta(seconds=5))

        # when all is well, then it is ready, each check saying so
        ready = httpx.get(f"{api}/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready"
        assert set(body["checks"]) == {"database", "migrations", "scheduler", "redis"}
        assert body["checks"]["migrations"]["detail"] == f"at {head_revision()}"

        # when the scheduler's last tick is five minutes old, then 503 naming the scheduler
        _tick(timedelta(minutes=5))
        stale = httpx.get(f"{api}/ready", timeout=10)
        assert stale.status_code == 503
        failed = {k for k, v in stale.json()["checks"].items() if not v["ok"]}
        assert failed == {"scheduler"}
        assert "last dispatch tick 300 s ago" in stale.json()["checks"]["scheduler"]["detail"]

        # when Redis stops (the tick fresh again), then 503 naming Redis, and only Redis
        _tick(timedelta(seconds=1))
        redis.stop()
        gone = httpx.get(f"{api}/ready", timeout=10)
        assert gone.status_code == 503
        checks = gone.json()["checks"]
        assert {k for k, v in checks.items() if not v["ok"]} == {"redis"}
        assert "Redis unreachable" in checks["redis"]["detail"]
        # and it shows no server address or password, and /health still answers
        assert "127.0.0.1" not in gone.text and "postgres" not in gone.text.lower()
        assert httpx.get(f"{api}/health", timeout=10).status_code == 200
    finally:
        redis.stop()


def test_ready_is_served_without_a_token(client: Any) -> None:
    _tick(timedelta(seconds=1))

    answer = client.get("/ready")

    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "ready"


@pytest.mark.parametrize(
    ("revision", "status", "detail"),
    [
        ("9999", 200, "at 9999, newer than this code's"),  # a newer release migrated it
        ("0013", 503, "database at 0013, this code needs"),  # the release has not run
    ],
)
def test_ready_takes_a_newer_schema_but_not_an_older_one(
    client: Any, revision: str, status: int, detail: str
) -> None:
    _tick(timedelta(seconds=1))
    head = head_revision()
    try:
        _set_revision(revision)
        answer = client.get("/ready")
    finally:
        _set_revision(str(head))

    assert answer.status_code == status, answer.text
    assert answer.json()["checks"]["migrations"]["detail"].startswith(detail)


def _set_revision(revision: str) -> None:
    with session_scope() as session:
        session.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})


def _doctor(**env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "STEPWISE_LOG_FORMAT": "text", **env}
    command = [sys.executable, "-m", "stepwise.cli", "doctor"]
    return subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )


def test_doctor_says_all_is_well_when_it_is(db: None, redis_client: Any) -> None:
    _tick(timedelta(seconds=1))

    done = _doctor()

    assert done.returncode == 0, done.stdout + done.stderr
    assert "stepwise doctor: 0 problem(s)" in done.stdout
    for name in ("configuration", "egress", "database", "migrations", "clock", "redis", "keys"):
        assert f"ok    {name}:" in done.stdout


def test_doctor_names_each_problem_and_what_to_fix(db: None, redis_client: Any) -> None:
    # given no Redis where REDIS_URL points, every internal address allowed, no scheduler
    dead = f"redis://:hunter2@127.0.0.1:{embedded.free_port()}/0"

    done = _doctor(REDIS_URL=dead, STEPWISE_AGENT_ALLOW="0.0.0.0/0")

    assert done.returncode == 1
    assert "FAIL  redis: Redis unreachable" in done.stdout
    assert "FAIL  egress: STEPWISE_AGENT_ALLOW admits 0.0.0.0/0" in done.stdout
    assert "FAIL  scheduler: no dispatch tick yet: start the scheduler process" in done.stdout
    assert "3 problem(s): egress, scheduler, redis" in done.stdout
    assert "hunter2" not in done.stdout + done.stderr


def test_doctor_refuses_a_bad_setting_with_its_name() -> None:
    done = _doctor(STEPWISE_LEASE_S="zero")

    assert done.returncode == 1
    assert "FAIL  configuration:" in done.stdout and "STEPWISE_LEASE_S" in done.stdout


def test_doctor_finds_a_clock_apart_from_the_database(db: None) -> None:
    with session_scope() as session:
        database_now = db_now(session)

    with time_machine.travel(database_now + timedelta(seconds=30), tick=False):
        apart = doctor.clock(database_now)
    with time_machine.travel(database_now, tick=False):
        together = doctor.clock(database_now)

    assert not apart.ok and "+30.0 s from PostgreSQL's" in apart.detail and "NTP" in apart.detail
    assert together.ok


def test_doctor_finds_secrets_no_key_opens(db: None) -> None:
    from core.secrets import new_key
    from service.secrets import set_secret
    from testkit.factories import ADMIN

    set_secret("AGENT_TOKEN", "value-1", actor=ADMIN)  # sealed with the session's key

    done = _doctor(STEPWISE_SECRET_KEYS=new_key())  # that key dropped without a reseal

    assert done.returncode == 1
    assert "FAIL  keys: 1 stored secret(s) open with none of STEPWISE_SECRET_KEYS" in done.stdout
