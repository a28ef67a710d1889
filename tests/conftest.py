"""Test servers: a real PostgreSQL, a real Redis, a real agent.

With TEST_DATABASE_URL / TEST_REDIS_URL set (CI uses the machine's servers) the
tests use those servers; with neither set they start the embedded ones, as on
a fresh machine. Each test session gets its own database built by
`alembic upgrade head`; each test starts from empty tables and an empty Redis.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text

ROOT = Path(__file__).resolve().parent.parent
_state: dict[str, Any] = {}


def _sqlalchemy_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _create_database(server_url: str) -> str:
    """A fresh database on the server of `server_url`; returns its URL."""
    name = f"stepwise_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    _state.setdefault("databases", []).append((server_url, name))
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    from stepwise import embedded

    tmp = Path(tempfile.mkdtemp(prefix="stepwise-tests-"))
    _state["tmp"] = tmp
    server_url = os.environ.get("TEST_DATABASE_URL")
    if server_url:
        server_url = _sqlalchemy_url(server_url)
    else:
        server_url = embedded.start_postgres(tmp / "postgres")
    _state["server_url"] = server_url
    database_url = _create_database(server_url)
    redis_url = os.environ.get("TEST_REDIS_URL")
    if not redis_url:
        server = embedded.start_redis(tmp / "redis", embedded.free_port(), persist=False)
        _state["redis"] = server
        redis_url = server.url
    os.environ.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            # Fast retries keep the suite quick; the spacing is still exponential.
            "STEPWISE_MIN_BACKOFF_MS": "200",
            "STEPWISE_MAX_BACKOFF_MS": "2000",
            "STEPWISE_LEASE_MARGIN_S": "5",
            "STEPWISE_REQUEUE_AFTER_S": "5",
            "STEPWISE_DEMO": "false",
        }
    )
    from stepwise.cli import migrate

    migrate(database_url)


def pytest_unconfigure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    try:
        from db.session import dispose_engine

        dispose_engine()
    except Exception:
        pass
    for server_url, name in _state.get("databases", []):
        admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    if "redis" in _state:
        _state["redis"].stop()
    shutil.rmtree(_state.get("tmp", "/nonexistent"), ignore_errors=True)


@pytest.fixture(scope="session")
def server_url() -> str:
    """The PostgreSQL server (not database) the tests may create databases on."""
    return str(_state["server_url"])


@pytest.fixture(scope="session")
def create_database() -> Callable[[], str]:
    return lambda: _create_database(_state["server_url"])


@pytest.fixture
def db() -> Iterator[None]:
    """Empty tables before the test (the schema stays)."""
    from db.models import Base
    from db.session import get_engine

    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with get_engine().begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield


@pytest.fixture
def redis_client() -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def agent() -> Iterator[Any]:
    from stepwise.demo_agent import AgentServer

    server = AgentServer().start()
    yield server
    server.stop()


@pytest.fixture
def worker(db: None, redis_client: Any) -> Iterator[Any]:
    """A real dramatiq Worker on the real Redis broker, in this process."""
    import dramatiq

    from tasks.actors import broker

    w = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100, queues={"default"})
    w.start()
    yield w
    w.stop(timeout=10_000)


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float = 30,
    interval: float = 0.1,
    message: str = "condition",
    details: Callable[[], str] | None = None,
) -> Any:
    """Poll until `predicate()` is truthy; fail with `message` after `timeout` seconds.

    `details` is asked for what to show on failure (a row's state, a process log).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    extra = f"\n{details()}" if details else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {message}{extra}")


@pytest.fixture
def procs(db: None, redis_client: Any, tmp_path: Path) -> Iterator[Any]:
    """Real Procfile processes (scheduler, dispatcher, worker...), stopped after the test."""
    from tests.procs import Processes

    processes = Processes(tmp_path)
    yield processes
    processes.stop_all()
