"""One engine per process, created lazily (after any fork), sessions on it, and the clock.

The caller owns the transaction: `with session_scope() as s:` is one unit of
work that commits on success and rolls back on error; every other `db` module
takes that session and never commits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import CTE, CursorResult, Engine, Result, Select, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from core.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")
_engine: Engine | None = None
_engine_pid: int | None = None
_factory: sessionmaker[Session] | None = None
_pre_ping = True


def ping_before_use(enabled: bool) -> None:
    """Whether each checkout first pings the server (one round trip per transaction).

    On by default: a Postgres restart leaves dead sockets in the pool. Workers turn
    it off: every write of theirs retries after a lost connection, and SQLAlchemy
    then drops the whole pool's old connections at once.
    """
    global _pre_ping
    if enabled != _pre_ping:
        _pre_ping = enabled
        dispose_engine()


def once_more_if_disconnected(work: Callable[[], T]) -> T:
    """`work()`, done again once if it failed on a connection the server had closed.

    With `ping_before_use(False)` (every Dramatiq process) the first transaction after
    a PostgreSQL restart meets a dead pooled connection; SQLAlchemy then invalidates
    every connection of the pool older than the failure, so the second try runs on a
    fresh one. For the periodic ticks (dispatch, housekeeping, notify), whose work is
    safe to repeat (slot keys, row claims): without it a tick after a restart was lost
    and its slots waited a minute for the next. A server still down fails again.
    """
    try:
        return work()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.warning("the database closed a pooled connection (restarted?); trying again")
        return work()


def get_engine() -> Engine:
    """The process's engine; a forked child gets a fresh one, never its parent's sockets."""
    global _engine, _engine_pid, _factory
    if _engine is None or _engine_pid != os.getpid():
        settings = get_settings()
        settings.require_servers()
        _engine = create_engine(
            settings.database_url,
            pool_pre_ping=_pre_ping,
            pool_size=settings.worker_threads + settings.worker_db_threads + 2,
            max_overflow=10,
            pool_recycle=1800,
            connect_args={"prepare_threshold": settings.db_prepare_threshold},
        )
        _engine_pid = os.getpid()
        _factory = sessionmaker(_engine, expire_on_commit=False)
    return _engine


def dispose_engine() -> None:
    """Close every pooled connection (tests, and after the URL changes)."""
    global _engine, _factory
    if _engine is not None:
        _engine.dispose()
    _engine = _factory = None


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error."""
    get_engine()
    assert _factory is not None
    with _factory() as session, session.begin():
        yield session


def rowcount(result: Result[Any]) -> int:
    """Rows matched by an UPDATE or DELETE (the claim and fence checks rely on it)."""
    return cast("CursorResult[Any]", result).rowcount


def locked_batch(rows: Select[*tuple[Any, ...]], name: str) -> CTE:
    """`rows` (a SELECT ... LIMIT n FOR UPDATE SKIP LOCKED) as a CTE read exactly once.

    Written as `WHERE id IN (subquery)` instead, PostgreSQL may run the subquery again
    for each outer row; rows the statement has already changed no longer match it, so
    every new run locks the next row and the statement takes far more than n.
    MATERIALIZED keeps the batch to the n rows locked once.
    """
    return rows.cte(name).prefix_with("MATERIALIZED")


def db_now(session: Session) -> datetime:
    """The database's clock: the only one that decides what is due."""
    now = session.scalar(text("SELECT now()"))
    assert isinstance(now, datetime)
    return now
