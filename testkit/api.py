"""The REST API in tests: a client on the app, tokens, the real `api` process, rows to compare."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.access import Actor
from core.vocabulary import Role
from service import tokens
from stepwise.embedded import free_port
from testkit.factories import ADMIN, table_snapshot
from testkit.processes import Processes

if TYPE_CHECKING:
    from fastapi.testclient import TestClient


def make_token(actor: Actor = ADMIN, role: Role = Role.ADMIN, name: str = "ci") -> str:
    """A new API token called `name` with `role` in `actor`'s workspace, made by `actor`;
    returns the secret (shown once, as the API shows it)."""
    return tokens.create_token(name, role, actor=actor).token


def bearer(token: str) -> dict[str, str]:
    """The headers that present `token` to the API."""
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def api_client() -> Iterator[TestClient]:
    """A TestClient on a new app, its lifespan run, built from the settings of now.

    A server error is answered as the 500 a caller would get, not raised in the test.
    """
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client


def writes() -> dict[str, Any]:
    """Every row of every table but the tokens' (whose "last used" a call may move):
    compare before and after to show that a refused call wrote nothing."""
    return {k: v for k, v in table_snapshot().items() if k != "api_tokens"}


@dataclass(frozen=True)
class ApiProcess:
    """The Procfile's `api`, running: where it answers, and what it logged."""

    url: str
    processes: Processes

    def log(self) -> str:
        return self.processes.log("api")

    def stop(self) -> None:
        self.processes.stop_all()


def start_api(log_dir: Path, **env: str) -> ApiProcess:
    """The Procfile's `api` started as production starts it, on a free loopback port, with
    `env` added, once it answers /health; the caller stops it."""
    port = free_port()
    api = ApiProcess(
        f"http://127.0.0.1:{port}", Processes(log_dir, STEPWISE_API_PORT=str(port), **env)
    )
    api.processes.start("api")
    try:
        api.processes.wait_http("api", f"{api.url}/health", timeout=30)
    except BaseException:
        api.stop()
        raise
    return api
