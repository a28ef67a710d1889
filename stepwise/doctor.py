"""`stepwise doctor`: check configuration, servers, keys, egress and clock; say what to fix.

Each check prints one line, `ok` or `FAIL`, with what was found or what to do; the exit
code is 1 when any check fails. It never prints a
URL's password, a key or a secret.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime

from core.errors import ConfigError
from core.settings import Settings, get_settings
from service.health import Check, database_checks, redis_check, unreadable_secrets

# More than this between this machine's clock and PostgreSQL's is a problem: the
# database decides what is due, but the workers' deadlines and signatures use this one.
MAX_SKEW_S = 2.0


def configuration() -> tuple[list[Check], Settings | None]:
    try:
        settings = get_settings()
    except ConfigError as exc:
        return [Check("configuration", False, str(exc))], None
    checks = []
    for name, require in (
        ("servers", settings.require_servers),
        ("login", settings.require_login_config),
    ):
        try:
            require()
        except ConfigError as exc:
            checks.append(Check(name, False, str(exc)))
        else:
            checks.append(Check(name, True, "configured"))
    return [Check("configuration", True, "every variable reads"), *checks], settings


def keys(settings: Settings) -> list[Check]:
    """The keys that seal secrets: configured, a local key file private, every secret opens."""
    checks = []
    key_file = settings.data_dir / "secret.key"
    if key_file.exists() and key_file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        fix = f"{key_file} is readable by others: chmod 600 {key_file}"
        checks.append(Check("key file", False, fix))
    try:
        box = settings.secret_box()
    except ConfigError as exc:
        return [*checks, Check("keys", False, str(exc))]
    try:
        unreadable = unreadable_secrets(box)
    except Exception:  # the database check says why
        return [*checks, Check("keys", True, "configured (stored secrets not read)")]
    if unreadable:
        fix = (
            f"{unreadable} stored secret(s) open with none of STEPWISE_SECRET_KEYS: put the "
            "dropped key back (after the first), then run `stepwise reseal`"
        )
        return [*checks, Check("keys", False, fix)]
    return [*checks, Check("keys", True, "every stored secret opens with the first keys")]


def egress(settings: Settings) -> list[Check]:
    """The agent allowlist: readable, and not opening every internal address at once."""
    try:
        policy = settings.egress_policy()
    except ConfigError as exc:
        return [Check("egress", False, str(exc))]
    wide = [
        str(entry.network)
        for entry in policy.allow
        if entry.network is not None and entry.network.prefixlen < 8
    ]
    if wide:
        fix = (
            f"STEPWISE_AGENT_ALLOW admits {', '.join(wide)}: agents (and whoever edits an "
            "automation) may reach any internal service; allow the agents' own addresses"
        )
        return [Check("egress", False, fix)]
    shown = settings.agent_allow or "nothing internal (the default)"
    return [Check("egress", True, f"allows {shown}")]


def clock(database_now: datetime, now: Callable[[], float] = time.time) -> Check:
    """This machine's clock against PostgreSQL's."""
    skew_s = now() - database_now.astimezone(UTC).timestamp()
    if abs(skew_s) > MAX_SKEW_S:
        fix = (
            f"this machine's clock is {skew_s:+.1f} s from PostgreSQL's (over {MAX_SKEW_S:g} s): "
            "run NTP (chrony, systemd-timesyncd) on both"
        )
        return Check("clock", False, fix)
    return Check("clock", True, f"{skew_s:+.2f} s from PostgreSQL's")


def diagnose() -> list[Check]:
    """Every check, in the order an operator would fix them."""
    checks, settings = configuration()
    if settings is None:
        return checks
    checks += egress(settings)
    if not settings.database_url:
        return checks
    found, state = database_checks()
    checks += found
    if state is not None:
        checks.append(clock(state.now))
    if settings.redis_url:
        checks.append(redis_check())
    return checks + keys(settings)


def main() -> int:
    checks = diagnose()
    for check in checks:
        print(f"{'ok' if check.ok else 'FAIL':4}  {check.name}: {check.detail}")
    failed = [check.name for check in checks if not check.ok]
    print(
        f"stepwise doctor: {len(failed)} problem(s)" + (f": {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0
