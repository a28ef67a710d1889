"""The fixtures every test module may ask for: real servers, the API, the dashboard, a browser.

Nothing starts until a test asks for it: the pure tests (`test_cron.py`,
`test_timing.py`, `test_schedule.py`, ...) run with no server at all. With
TEST_DATABASE_URL / TEST_REDIS_URL set (CI uses the machine's servers) the tests
use those servers; with neither set they start embedded ones, as on a fresh
machine. The test session gets its own database built by `alembic upgrade head`;
each test that asks for `db` starts from empty tables, `redis_client` from an
empty Redis database. Servers that keep nothing of a test's own (the `api` and
`web` processes, which read the database afresh on every request) are started
once per session, Chromium once per module; the plain helpers are in `testkit/`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import text

from core.secrets import new_key
from stepwise import embedded

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from testkit.api import ApiProcess
    from testkit.receivers import Receiver
    from testkit.servers import OwnPostgres

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


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A local HTTP receiver for HTTP channels (`testkit.receivers.http_receiver`)."""
    from testkit.receivers import http_receiver

    with http_receiver() as received:
        yield received


# --- the API ------------------------------------------------------------------------------


@pytest.fixture
def client(db: None, redis_client: Any) -> Iterator[TestClient]:
    """A TestClient on the API app (`testkit.api.api_client`), over empty tables and Redis.

    One per test: a test may change the settings first, and the app is built from them.
    """
    from testkit.api import api_client

    with api_client() as test_client:
        yield test_client


@pytest.fixture
def admin(db: None) -> dict[str, str]:
    """The headers of a new admin token of the default workspace, named "ci"."""
    from testkit.api import bearer, make_token

    return bearer(make_token())


@pytest.fixture(scope="session")
def api_process(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    """The Procfile's `api` with the settings of the session, one for all the tests that do
    not change them: it keeps no state of its own between requests (rate counters are in
    Redis)."""
    from testkit.api import start_api

    api = start_api(tmp_path_factory.mktemp("api"))
    yield api
    api.stop()


@pytest.fixture
def api_http(db: None, redis_client: Any, api_process: ApiProcess) -> Iterator[Any]:
    """An httpx client of the real `api` process (no token), over empty tables and Redis."""
    import httpx

    with httpx.Client(base_url=api_process.url, timeout=10) as client:
        yield client


# --- the dashboard in a browser -------------------------------------------------------------


@pytest.fixture(scope="session")
def dashboard_url(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Where the Procfile's `web` (the dashboard, local mode, no login) answers: one for the
    session, as every page reads the database afresh on each run."""
    from testkit.processes import Processes

    port = embedded.free_port()
    processes = Processes(tmp_path_factory.mktemp("web"), PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    processes.start("web")
    try:
        processes.wait_http("web", f"{url}/_stcore/health")
        yield url
    finally:
        processes.stop_all()


def pytest_report_header() -> str | None:
    """One line at the top of the run when the browser tests will be skipped, and why."""
    from testkit.browser import chromium_missing

    return chromium_missing()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    """Playwright for one test module's browser tests.

    Not one for the session: while it runs, the thread has a running event loop, and
    `asyncio.run` in the modules that follow would refuse to start.
    """
    from playwright.sync_api import sync_playwright

    from testkit.browser import require_chromium

    require_chromium()
    with sync_playwright() as started:
        yield started


@pytest.fixture(scope="module")
def chromium(playwright: Any) -> Iterator[Any]:
    """Debian's Chromium, headless, shared by one module's tests (each opens its own
    `testkit.browser.window`, which shares no cookies)."""
    from testkit.browser import launch

    with launch(playwright) as browser:
        yield browser


@pytest.fixture
def browser_page(chromium: Any) -> Iterator[Any]:
    """A tall desktop window (1440 x 1900) in New York's time zone."""
    from testkit.browser import TALL, window

    with window(chromium, viewport=TALL, timezone_id="America/New_York") as page:
        yield page


@pytest.fixture
def own_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OwnPostgres]:
    """A migrated PostgreSQL of the test's own, which it may restart; this process's
    settings point at it."""
    from core.settings import get_settings
    from db.session import dispose_engine
    from stepwise.cli import migrate
    from testkit.factories import seed_access
    from testkit.servers import OwnPostgres

    server = OwnPostgres(tmp_path / "own-postgres")
    migrate(server.url)
    # The test's own reads and writes (factories, recover_stranded) go there too.
    monkeypatch.setenv("DATABASE_URL", server.url)
    get_settings.cache_clear()
    dispose_engine()
    seed_access()  # the default workspace and the tests' admin, as the `db` fixture makes
    yield server
    dispose_engine()
    monkeypatch.undo()
    get_settings.cache_clear()
    server.stop()


@pytest.fixture
def own_procs(own_postgres: OwnPostgres, redis_client: Any, tmp_path: Path) -> Iterator[Any]:
    """Real Procfile processes on the test's own PostgreSQL (`own_postgres`, which the test
    may restart), stopped after the test and before that server."""
    from testkit.processes import Processes

    processes = Processes(
        tmp_path,
        DATABASE_URL=own_postgres.url,
        STEPWISE_WORKER_PROCESSES="1",
        STEPWISE_WORKER_THREADS="4",
    )
    yield processes
    processes.stop_all()
