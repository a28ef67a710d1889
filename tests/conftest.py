"""Test servers as lazy session fixtures: a real PostgreSQL, a real Redis, a real agent.

Nothing starts until a test asks for it: the pure tests (`test_cron.py`,
`test_timing.py`, `test_schedule.py`, ...) run with no server at all. With
TEST_DATABASE_URL / TEST_REDIS_URL set (CI uses the machine's servers) the tests
use those servers; with neither set they start embedded ones, as on a fresh
machine. The test session gets its own database built by `alembic upgrade head`;
each test that asks for `db` starts from empty tables, `redis_client` from an
empty Redis database.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from core.secrets import new_key
from stepwise import embedded

# Read by Settings in every process the tests start; fixed before anything imports it.
os.environ.update(
    {
        # Fast retries keep the suite quick; the spacing is still exponential.
        "STEPWISE_MIN_BACKOFF_MS": "200",
        "STEPWISE_MAX_BACKOFF_MS": "2000",
        "STEPWISE_LEASE_S": "10",
        "STEPWISE_REQUEUE_AFTER_S": "5",
        "STEPWISE_DEMO": "false",
        # Every test agent listens on loopback; tests/test_egress.py checks the guard itself.
        "STEPWISE_AGENT_ALLOW": "127.0.0.1",
        # A key of this session's own, as `stepwise run` makes one under the data directory.
        "STEPWISE_SECRET_KEYS": new_key(),
    }
)
# Building the broker connects nothing, so REDIS_URL is fixed now (a module may
# declare the actors at import); the embedded server on that port starts only
# when a test asks for Redis.
_REDIS_PORT = embedded.free_port()
os.environ["REDIS_URL"] = os.environ.get("TEST_REDIS_URL") or f"redis://127.0.0.1:{_REDIS_PORT}/0"
os.environ.pop("DATABASE_URL", None)  # set by the `database_url` fixture, never inherited


def _refresh_settings() -> None:
    from core.settings import get_settings
    from db.session import dispose_engine

    get_settings.cache_clear()
    dispose_engine()


@pytest.fixture(scope="session")
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="stepwise-tests-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def server_url(scratch: Path) -> str:
    """The PostgreSQL server (not database) the tests may create databases on."""
    from testkit.servers import postgres_server

    return postgres_server(os.environ.get("TEST_DATABASE_URL"), scratch)


@pytest.fixture(scope="session")
def create_database(server_url: str) -> Iterator[Callable[[], str]]:
    """Make empty (unmigrated) databases on the test server; all dropped at the end."""
    from testkit.servers import create_database, drop_database

    made: list[str] = []

    def make() -> str:
        made.append(create_database(server_url, migrated=False))
        return made[-1]

    yield make
    for url in made:
        drop_database(url)


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """The session's migrated database, set as DATABASE_URL for this and child processes."""
    from testkit.servers import create_database, drop_database

    url = create_database(server_url)
    os.environ["DATABASE_URL"] = url
    _refresh_settings()
    yield url
    _refresh_settings()
    drop_database(url)


@pytest.fixture(scope="session")
def redis_url(scratch: Path) -> Iterator[str]:
    """A Redis for the broker: the machine's (TEST_REDIS_URL) or an embedded one."""
    url = os.environ["REDIS_URL"]
    server = None
    if not os.environ.get("TEST_REDIS_URL"):
        server = embedded.start_redis(scratch / "redis", _REDIS_PORT, persist=False)
    yield url
    if server is not None:
        server.stop()


@pytest.fixture
def db(database_url: str) -> Iterator[None]:
    """Empty tables before the test (the schema stays), but for the default workspace
    and its admin `testkit.factories.ADMIN`, whom the factories act as."""
    from db.models import Base
    from db.session import get_engine

    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    from testkit.factories import seed_access

    with get_engine().begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    seed_access()
    yield


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
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
    from testkit.processes import worker_in_process

    with worker_in_process(threads=4) as running:
        yield running


@pytest.fixture
def procs(db: None, redis_client: Any, tmp_path: Path) -> Iterator[Any]:
    """Real Procfile processes (scheduler, dispatcher, worker...), stopped after the test."""
    from testkit.processes import Processes

    processes = Processes(tmp_path, STEPWISE_WORKER_PROCESSES="1", STEPWISE_WORKER_THREADS="4")
    yield processes
    processes.stop_all()
