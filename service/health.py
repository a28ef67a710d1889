"""Readiness: whether this process can do its work now, each check with what to fix.

`/ready` on the API and `stepwise doctor` ask the same questions: PostgreSQL reachable
and at this code's head migration, Redis reachable, the scheduler's dispatch tick fresh.
Answers name what failed in words an operator can act on, never a URL, a password or
a server's own error text (which may carry either).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from core.secrets import SecretBox
from core.settings import get_settings
from db import health
from db.health import DatabaseState, database_state
from db.session import session_scope

# The dashboard warns past this age; the scheduler ticks every minute.
STALE_TICK = timedelta(minutes=2)
REDIS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str  # what was found, or what is wrong and what to do


def database_checks() -> tuple[list[Check], DatabaseState | None]:
    """PostgreSQL reachable, at the head migration, the scheduler ticking; and its state."""
    try:
        with session_scope() as session:
            state = database_state(session)
    except Exception as exc:  # any failure to reach it; its text may hold the URL
        reason = type(exc).__name__
        fix = f"PostgreSQL unreachable ({reason}): check DATABASE_URL and that the server is up"
        return [Check("database", False, fix)], None
    checks = [Check("database", True, "reachable")]
    if state.at_head:
        checks.append(Check("migrations", True, f"at {state.head}"))
    elif state.ahead:
        found = f"at {state.revision}, newer than this code's {state.head} (a newer release)"
        checks.append(Check("migrations", True, found))
    else:
        found = state.revision or "no migration"
        fix = f"database at {found}, this code needs {state.head}: run `alembic upgrade head`"
        checks.append(Check("migrations", False, fix))
    checks.append(scheduler_check(state))
    return checks, state


def scheduler_check(state: DatabaseState) -> Check:
    tick = state.liveness.dispatch_at
    if tick is None:
        return Check("scheduler", False, "no dispatch tick yet: start the scheduler process")
    age_s = (state.now - tick).total_seconds()
    if state.liveness.stale(STALE_TICK):
        fix = (
            f"last dispatch tick {age_s:.0f} s ago (over {STALE_TICK.total_seconds():.0f} s): "
            "check the scheduler and dispatcher processes"
        )
        return Check("scheduler", False, fix)
    return Check("scheduler", True, f"last dispatch tick {age_s:.0f} s ago")


def redis_check() -> Check:
    import redis

    url = get_settings().redis_url
    if not url:
        return Check("redis", False, "REDIS_URL not set")
    client = redis.Redis.from_url(
        url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        fix = f"Redis unreachable ({type(exc).__name__}): check REDIS_URL and that it is up"
        return Check("redis", False, fix)
    finally:
        client.close()
    return Check("redis", True, "reachable")


def readiness() -> list[Check]:
    """Every readiness check, in order: database, migrations, scheduler, redis."""
    checks, _ = database_checks()
    return [*checks, redis_check()]


def unreadable_secrets(box: SecretBox) -> int:
    """How many stored secrets none of `box`'s keys opens (a key dropped before a reseal)."""
    with session_scope() as session:
        return health.unreadable_secrets(session, box)
