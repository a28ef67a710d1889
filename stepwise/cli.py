"""The `stepwise` command: run the whole system locally, and small process helpers.

stepwise run                 # every Procfile process, embedded servers if no URLs
stepwise web                 # the dashboard alone (refuses a non-loopback address)
                             # (the REST API is the Procfile's `api`: python -m api)
stepwise respawn -- CMD ...  # keep CMD running (the scheduler exits when Redis is away)
stepwise metered ROLE -- CMD # run a worker or dispatcher group with its metrics folder
stepwise dramatiq ARGS ...   # Dramatiq's command (dispatcher, worker), with Stepwise's logs
stepwise periodiq ARGS ...   # periodiq's command (scheduler), with Stepwise's logs
stepwise doctor              # check configuration, servers, keys, egress and clock; say what to fix
stepwise demo-agent          # the bundled agent alone
stepwise new-key             # a key for STEPWISE_SECRET_KEYS
stepwise reseal              # after a new key is put first: re-seal every stored secret
stepwise export ...          # history to CSV / Parquet / Excel
stepwise apply -f FILE       # create/update automations and schedules from YAML
stepwise export-defs         # write them back as YAML
stepwise secret-origins NAME ORIGIN...  # where a workspace secret may be sent (admins)
stepwise api list|pause|resume|run|tail ...  # the REST API for scripts
"""
# Over 400 lines: every subcommand and its parser, one short function each (the REST API
# client is stepwise/apicli.py, definitions as code stepwise/defs.py).

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.logs import configure_logging

if TYPE_CHECKING:
    import uuid

    from core.access import Actor

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
LOCAL_PROCESSES = ("web", "api", "scheduler", "dispatcher", "worker")


def read_procfile(path: Path = ROOT / "Procfile") -> dict[str, str]:
    from honcho.environ import parse_procfile

    return dict(parse_procfile(path.read_text()).processes)


def process_manager(printer: Any = None) -> Any:
    """honcho's Manager, made safe for a stop signal that comes while processes start.

    honcho 2.0 signals only the processes whose pid it already knows: a Ctrl-C in the
    first moments of `stepwise run` raised inside its signal handler (no pid yet), left
    the late processes running in their own sessions, and the command waited for them
    forever. Here a stop asked before a process reported its pid reaches it as soon as
    the pid arrives (honcho checks every 0.1 s whether all have started).
    """
    from honcho.manager import Manager

    class StopSafeManager(Manager):  # type: ignore[misc]
        def _killall(self, force: bool = False) -> None:
            pending = self.__dict__.setdefault("_pending", {})
            for name, process in self._processes.items():
                if "returncode" in process:
                    continue
                if process.get("pid") is None:  # not started yet: signalled when it is
                    pending[name] = force or pending.get(name, False)
                else:
                    self._signal(name, force)

        def _all_started(self) -> bool:
            pending = self.__dict__.get("_pending", {})
            for name in [n for n in pending if self._processes[n].get("pid") is not None]:
                force = pending.pop(name)
                if "returncode" not in self._processes[name]:
                    self._signal(name, force)
            return bool(super()._all_started())

        def _signal(self, name: str, force: bool) -> None:
            pid = self._processes[name]["pid"]
            kind = "SIGKILL" if force else "SIGTERM"
            self._system_print(f"sending {kind} to {name} (pid {pid})\n")
            (self._procmgr.kill if force else self._procmgr.terminate)(pid)

    return StopSafeManager(printer)


def migrate(database_url: str) -> None:
    """`alembic upgrade head` on the given database (the Procfile's release step)."""
    from alembic.config import Config

    from alembic import command

    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["url"] = database_url
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head")


def seed_demo(agent_url: str) -> bool:
    """On first start (no automation at all), create the demo automation and its schedule."""
    from service.definitions import seed_demo as seed

    return seed(agent_url)


def local_key(path: Path) -> str:
    """The local mode's key for STEPWISE_SECRET_KEYS, made on first start (owner-only file)."""
    from core.secrets import new_key

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(new_key())
    return path.read_text().strip()


def run(_: argparse.Namespace) -> int:
    from core.settings import DEFAULT_API_PORT, get_settings
    from stepwise import embedded, local

    settings = get_settings()
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["PORT"] = str(settings.web_port)
    api_port = settings.api_port or DEFAULT_API_PORT
    env["STEPWISE_API_PORT"] = str(api_port)
    env["STEPWISE_WORKER_PROCESSES"] = str(settings.worker_processes)
    env["STEPWISE_WORKER_THREADS"] = str(settings.worker_threads)
    redis = None
    if not settings.database_url:
        print(f"stepwise: starting embedded PostgreSQL in {settings.data_dir / 'postgres'}")
        env["DATABASE_URL"] = embedded.start_postgres(settings.data_dir / "postgres")
    if not settings.redis_url:
        print(f"stepwise: starting embedded Redis on 127.0.0.1:{settings.redis_port}")
        redis = embedded.start_redis(settings.data_dir / "redis", settings.redis_port)
        env["REDIS_URL"] = redis.url
    # The demo is local mode's: with login there is no local admin to own it.
    demo = settings.demo and not settings.login_required
    if demo:  # the bundled agent is on this machine, and allowed
        agent = f"127.0.0.1:{settings.demo_agent_port}"
        env["STEPWISE_AGENT_ALLOW"] = f"{settings.agent_allow} {agent}".strip()
    key_file = None
    if not settings.secret_keys:
        key_file = settings.data_dir / "secret.key"
        env["STEPWISE_SECRET_KEYS"] = local_key(key_file)
    env.setdefault("STEPWISE_API_URL", f"http://127.0.0.1:{api_port}")
    for name in ("DATABASE_URL", "REDIS_URL", "STEPWISE_AGENT_ALLOW", "STEPWISE_SECRET_KEYS"):
        if name in env:
            os.environ[name] = env[name]
    get_settings.cache_clear()
    try:
        migrate(env["DATABASE_URL"])
        # The other commands (apply, export, ...) find this system here, with no setup.
        local.record(settings.data_dir, env, key_file=key_file)
        manager = process_manager()
        processes = read_procfile()
        for name in LOCAL_PROCESSES:
            manager.add_process(name, processes[name], env=env, cwd=str(ROOT))
        if demo:
            agent_url = f"http://127.0.0.1:{settings.demo_agent_port}/agent"
            if seed_demo(agent_url):
                print("stepwise: created the demo automation (runs every minute)")
            # The demo agent checks every call's signature, as a real agent should: with
            # the secret of the automation that sent it, read from the database, so that
            # any automation pointed at it works, and a new secret takes over at once.
            manager.add_process(
                "agent",
                f"{sys.executable} -m stepwise.demo_agent --port {settings.demo_agent_port} "
                "--verify-stored",
                env=env,
                cwd=str(ROOT),
            )
        print(
            f"stepwise: dashboard at http://127.0.0.1:{settings.web_port}, "
            f"API at http://127.0.0.1:{api_port} (docs at /docs)  (Ctrl-C stops)"
        )
        manager.loop()
        return manager.returncode or 0
    finally:
        from service import admin

        local.forget(settings.data_dir)
        admin.close()
        if redis is not None:
            redis.stop()


def _beside_run() -> None:
    """With no servers configured, act on the `stepwise run` running on the data directory
    (its addresses and key, `stepwise.local`); nothing when none runs there."""
    from core.errors import ConfigError
    from core.settings import get_settings
    from stepwise import local

    try:
        data_dir = get_settings().data_dir
    except ConfigError:
        return  # the command itself says what is wrong
    if local.adopt(data_dir):
        get_settings.cache_clear()


def web(_: argparse.Namespace) -> int:
    """The Procfile's `web`: the dashboard (`dashboard/server.py`), refusing to listen beyond
    loopback without login. Its Streamlit settings and login secrets are given in that
    process, so they hold wherever this starts and leave no file behind."""
    from core.settings import get_settings

    get_settings().require_private_web()
    server = ROOT / "dashboard" / "server.py"
    os.execv(sys.executable, [sys.executable, str(server)])


def new_key(_: argparse.Namespace) -> int:
    from core.secrets import new_key as make

    print(make())
    return 0


def reseal(_: argparse.Namespace) -> int:
    """Key rotation: after a new key is put first in STEPWISE_SECRET_KEYS, re-seal everything."""
    from service import admin

    count = admin.reseal()
    print(f"stepwise reseal: {count} secret(s) sealed with the first key; older keys can go")
    return 0


def respawn(args: argparse.Namespace) -> int:
    """Run the command, start it again when it exits; stop it and return on SIGTERM/SIGINT."""
    command = [c for c in args.command if c != "--"]
    if not command:
        print("stepwise respawn: nothing to run", file=sys.stderr)
        return 2
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    delay = 1.0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command)
        code = child.wait()
        if stopping:
            return 0
        # Back off while it keeps failing fast (e.g. Redis down), up to 30 s.
        delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, 30.0)
        log.warning("%s exited with %s; restarting in %.0f s", command[0], code, delay)
        for _ in range(int(delay * 10)):  # short naps: a stop signal is honoured at once
            if stopping:
                return 0
            time.sleep(0.1)


METERED_ROLES = ("worker", "dispatcher")


def metered(args: argparse.Namespace) -> int:
    """Become the command with the metrics of a Procfile process group set up: a fresh
    multiprocess folder for prometheus-client, and where Dramatiq's Prometheus
    middleware serves the group's metrics (docs/METRICS.md)."""
    from core.settings import get_settings

    command = [c for c in args.command if c != "--"]
    if not command:
        print("stepwise metered: nothing to run", file=sys.stderr)
        return 2
    settings = get_settings()
    folder = str(fresh_metrics_dir(settings.metrics_base(), args.role, os.getpid()))
    os.environ.update(
        {
            # prometheus-client's, then Dramatiq's names for the same folder and server.
            "PROMETHEUS_MULTIPROC_DIR": folder,
            "dramatiq_prom_db": folder,
            "dramatiq_prom_host": settings.metrics_address,
            "dramatiq_prom_port": str(settings.metrics_port(args.role)),
        }
    )
    os.execvp(command[0], command)  # the same pid: the folder is named after it


def fresh_metrics_dir(base: Path, role: str, pid: int) -> Path:
    """An empty folder `<base>/<role>-<pid>` for one process group's metrics files.

    Counters restart from zero with the group, as Prometheus expects of a restarted
    target: files a previous group left (same pid reused, or a dead group's pid) are
    removed; a live group's folder is left alone, so two groups may share `base`.
    """
    from core.errors import ConfigError

    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    if base.stat().st_uid != os.getuid():
        raise ConfigError(f"STEPWISE_METRICS_DIR: {base} belongs to another user")
    for old in base.glob(f"{role}-*"):
        number = old.name.rpartition("-")[2]
        if number.isdigit() and (int(number) == pid or not _alive(int(number))):
            shutil.rmtree(old, ignore_errors=True)
    folder = base / f"{role}-{pid}"
    folder.mkdir(mode=0o700)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def export(args: argparse.Namespace) -> int:
    """Write the filtered execution history to a file (same rows as the dashboard's export)."""
    import uuid
    from datetime import UTC, datetime

    from core.errors import StepwiseError
    from db.queries import ExecutionFilters
    from service.exports import write_history
    from service.unit import read

    def when(value: str | None) -> datetime | None:
        if value is None:
            return None
        parsed = datetime.fromisoformat(value)  # a time without zone is UTC
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    try:
        filters = ExecutionFilters(
            statuses=tuple(args.status or ()),
            automation_id=uuid.UUID(args.automation) if args.automation else None,
            schedule_id=uuid.UUID(args.schedule) if args.schedule else None,
            trigger=args.trigger,
            since=when(args.since),
            until=when(args.until),
        )
        actor = _member(args)
        rows = read(
            write_history, filters, args.out, args.format, actor=actor, chunk_size=args.chunk_size
        )
    except (StepwiseError, ValueError) as exc:
        print(f"stepwise export: {exc}", file=sys.stderr)
        return 2
    print(f"stepwise export: wrote {rows} rows to {args.out}")
    return 0


def _add_export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from core.vocabulary import ExecutionStatus, Trigger
    from service.exports import FORMATS

    p = sub.add_parser("export", help="write execution history to CSV / Parquet / Excel")
    p.add_argument("--format", choices=FORMATS, default="csv")
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--status", action="append", choices=list(ExecutionStatus), help="repeatable")
    p.add_argument("--automation", help="automation id")
    p.add_argument("--schedule", help="schedule id")
    p.add_argument("--trigger", choices=list(Trigger))
    p.add_argument("--since", help="ISO time, inclusive (queued at)")
    p.add_argument("--until", help="ISO time, exclusive (queued at)")
    p.add_argument("--workspace", help="workspace id (default: the person's first)")
    p.add_argument(
        "--as", dest="as_", help="export as this member (needed with login; else local admin)"
    )
    p.add_argument("--chunk-size", type=int, default=50_000, help=argparse.SUPPRESS)
    p.set_defaults(func=export)


def _member(args: argparse.Namespace) -> Actor:
    """The --as member (in local mode, by default the local admin) in --workspace or their
    first one; with login configured --as is required."""
    from service import acting

    return acting.member(args.as_, _workspace(args))


def _workspace(args: argparse.Namespace) -> uuid.UUID | None:
    import uuid

    return uuid.UUID(args.workspace) if args.workspace else None


def apply_defs(args: argparse.Namespace) -> int:
    """Create or update the file's definitions in one transaction (none on --dry-run)."""
    from core.errors import StepwiseError
    from service import definitions
    from stepwise import defs

    try:
        plan = definitions.apply(
            lambda unit: defs.apply(unit, args.file),
            person=args.as_,
            workspace_id=_workspace(args),
            dry_run=args.dry_run,
        )
    except (StepwiseError, ValueError) as exc:
        print(f"stepwise apply: {exc}", file=sys.stderr)
        return 2
    for line in plan.lines:
        print(line)
    verb = "would change" if args.dry_run else "changed"
    print(f"stepwise apply: {verb} {len(plan.lines)} item(s)" if plan.changed else "no changes")
    return 0


def export_defs(args: argparse.Namespace) -> int:
    from core.errors import StepwiseError
    from service.unit import read
    from stepwise import defs

    try:
        text = read(defs.export, actor=_member(args))
    except (StepwiseError, ValueError) as exc:
        print(f"stepwise export-defs: {exc}", file=sys.stderr)
        return 2
    if args.out in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


def secret_origins(args: argparse.Namespace) -> int:
    """Bind a workspace secret to the agent origins it may be sent to (admins; audited)."""
    from core.errors import StepwiseError
    from service import secrets

    try:
        secrets.set_secret_origins(args.name, args.origins, actor=_member(args))
    except (StepwiseError, ValueError) as exc:
        print(f"stepwise secret-origins: {exc}", file=sys.stderr)
        return 2
    where = ", ".join(args.origins) or "nowhere"
    print(f"stepwise secret-origins: {args.name} may be sent to {where}")
    return 0


def _add_defs_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("secret-origins", help="bind a workspace secret to agent origins")
    r.add_argument("name", help="the secret's name")
    r.add_argument("origins", nargs="*", help="https://agent.example.com ... (none: nowhere)")
    r.add_argument("--workspace", help="workspace id (default: the person's first)")
    r.add_argument("--as", dest="as_", help="act as this member (default local admin)")
    r.set_defaults(func=secret_origins)
    p = sub.add_parser("apply", help="create or update automations and schedules from YAML")
    p.add_argument("-f", "--file", required=True)
    p.add_argument("--dry-run", action="store_true", help="show the changes, write nothing")
    q = sub.add_parser("export-defs", help="write automations and schedules as YAML")
    q.add_argument("-o", "--out", help="file to write (default: stdout)")
    for parser in (p, q):
        parser.add_argument("--workspace", help="workspace id (default: the person's first)")
        parser.add_argument(
            "--as", dest="as_", help="act as this member (needed with login; else local admin)"
        )
    p.set_defaults(func=apply_defs)
    q.set_defaults(func=export_defs)


def _add_metered_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "metered", help="run a dramatiq process group with its metrics"
    )
    p.add_argument("role", choices=METERED_ROLES)
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=metered)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["metered"]:
        # It starts every worker and dispatcher: none of the other commands' imports
        # (pandas, SQLAlchemy: seconds of CPU) before dramatiq starts.
        light = argparse.ArgumentParser(prog="stepwise").add_subparsers()
        args = _add_metered_parser(light).parse_args(argv[1:])
        sys.exit(metered(args))
    parser = argparse.ArgumentParser(
        prog="stepwise", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command_name", required=True)
    sub.add_parser("run", help="run the whole system").set_defaults(func=run)
    sub.add_parser("web", help="run the dashboard (the Procfile's web)").set_defaults(func=web)
    p = sub.add_parser("respawn", help="keep a command running")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=respawn)
    _add_metered_parser(sub)
    for tool in ("dramatiq", "periodiq"):
        p = sub.add_parser(tool, help=f"{tool}'s own command, logging as every Stepwise process")
        p.add_argument("arguments", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda a, tool=tool: getattr(launch, tool)(a.arguments))
    p = sub.add_parser("demo-agent", help="run the bundled demo agent")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda a: __import__("stepwise.demo_agent").demo_agent.main(a.rest) or 0)
    sub.add_parser("new-key", help="print a new key for STEPWISE_SECRET_KEYS").set_defaults(
        func=new_key
    )
    sub.add_parser(
        "reseal", help="seal every stored secret with the first of STEPWISE_SECRET_KEYS"
    ).set_defaults(func=reseal)
    sub.add_parser(
        "doctor", help="check configuration, servers, keys, egress and clock; say what to fix"
    ).set_defaults(func=lambda _: __import__("stepwise.doctor").doctor.main())
    _add_export_parser(sub)
    _add_defs_parsers(sub)
    from stepwise import apicli, launch

    apicli.add_parser(sub)
    args = parser.parse_args(argv)
    configure_logging()
    from core.errors import StepwiseError

    if args.command_name != "run":
        _beside_run()

    try:
        sys.exit(args.func(args))
    except StepwiseError as exc:  # configuration, ports: say it plainly
        print(f"stepwise: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
