"""PostgreSQL and Redis for tests and benchmarks: the machine's, or embedded ones.

A URL given (TEST_* for the tests, --server-url for the benchmarks) is used as is;
without one an embedded server is started, only when something first asks for it.
Each run gets its own database, built by `alembic upgrade head` and dropped after.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

from stepwise import embedded


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
