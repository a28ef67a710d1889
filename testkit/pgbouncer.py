"""Debian's PgBouncer in tests: a real pooler in transaction mode in front of the test
PostgreSQL, in its own folder on a free 127.0.0.1 port."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import make_url

from stepwise.embedded import free_port
from testkit.waiting import wait_for

PGBOUNCER = Path("/usr/sbin/pgbouncer")
MISSING = (
    f"PgBouncer tests skipped: {PGBOUNCER} is missing (`make test` installs Debian's "
    "pgbouncer when it runs as root; or apt-get install pgbouncer)"
)


def pgbouncer_missing() -> str | None:
    """Why the PgBouncer tests cannot run here (one line), or None where they can."""
    return None if PGBOUNCER.exists() else MISSING


def require_pgbouncer() -> None:
    """Skip the test where PgBouncer is missing; in CI (CI=true), where it must be, fail it."""
    why = pgbouncer_missing()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


class PgBouncer:
    """A running PgBouncer: `url(database_url)` reaches the same database through it."""

    def __init__(self, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
        self.port = port
        self.process = process
        self.log_path = log

    def url(self, database_url: str) -> str:
        """`database_url` (a database of the server behind it) through this PgBouncer."""
        url = make_url(database_url)
        return url.set(host="127.0.0.1", port=self.port, query={}).render_as_string(
            hide_password=False
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def pgbouncer(database_url: str, folder: Path, *, pool_size: int) -> Iterator[PgBouncer]:
    """PgBouncer in `pool_mode = transaction` in front of the server of `database_url`,
    `pool_size` server connections per database, clients let in without a password (it logs
    in to PostgreSQL as the URL's user); its configuration and log in `folder`."""
    require_pgbouncer()
    folder.mkdir(parents=True, exist_ok=True)
    server = make_url(database_url)
    # A TCP server, or the embedded one's socket folder (`?host=/path`).
    host = server.host or str(server.query.get("host", ""))
    target = {"host": host, "port": server.port or 5432, "user": server.username}
    if server.password:
        target["password"] = server.password
    port = free_port()
    config = folder / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        # Any database name, on the server above, logged in as its user.
        + "* = "
        + " ".join(f"{key}='{value}'" for key, value in target.items())
        + "\n[pgbouncer]\n"
        + f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        + "auth_type = any\npool_mode = transaction\n"
        # Every server connection open from the start and taken in turn (not the last one
        # used first): as under load, a client's next transaction lands on another one.
        + f"default_pool_size = {pool_size}\nmin_pool_size = {pool_size}\nreserve_pool_size = 0\n"
        + "server_round_robin = 1\nmax_client_conn = 1000\n"
    )
    log = folder / "pgbouncer.log"
    # It refuses to run as root: as root, it reads its configuration, then becomes nobody.
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [str(PGBOUNCER), *user, str(config)], stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    bouncer = PgBouncer(port, process, log)
    try:
        wait_for(
            lambda: _accepts_connections(port) or process.poll() is not None,
            timeout=30,
            message="PgBouncer to listen",
        )
        if process.poll() is not None:
            raise AssertionError(f"pgbouncer exited:\n{bouncer.log()[-3000:]}")
        yield bouncer
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
