"""The REST API fuzzed by schemathesis against the OpenAPI schema it serves, with a token.

Every operation gets a few generated requests (valid and invalid): none may answer
5xx, every answer must match the schema (status, content type, body), every
error must be problem+json, and a refused request must write nothing.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core.vocabulary import ExecutionStatus, Role
from db import channels, tokens
from db.session import session_scope
from testkit.factories import ADMIN, add_runs, make_automation, make_schedule, row_counts

PROBLEM = "application/problem+json"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def auth(db: None) -> dict[str, str]:
    """An admin token, and something in the workspace for it to find."""
    automation_id = make_automation()
    make_schedule(automation_id)
    add_runs(automation_id, [{"status": ExecutionStatus.FAILED}])
    with session_scope() as session:
        channels.add_channel(session, "on-call", "json://hook:pw@127.0.0.1:9/hooks", actor=ADMIN)
        token = tokens.create_token(session, "fuzz", Role.ADMIN, actor=ADMIN).token
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse every connection this process opens beyond loopback (a channel's test-send
    contacts its URL: a generated channel must not reach anything outside this machine);
    the test then checks none was tried."""
    tried: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def allowed(sock: socket.socket, address: Any) -> bool:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return True
        if address[0] in ("127.0.0.1", "::1", "localhost"):
            return True
        tried.append(str(address))
        return False

    def connect(sock: socket.socket, address: Any) -> None:
        if not allowed(sock, address):
            raise ConnectionRefusedError(f"test: no connection beyond loopback ({address})")
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        return real_connect_ex(sock, address) if allowed(sock, address) else 111

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield tried


def _fuzz(case: Any, auth: dict[str, str]) -> None:
    before = row_counts()
    response = case.call(headers=dict(auth))
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400:
        assert response.headers["content-type"] == [PROBLEM], response.text
        assert row_counts() == before, f"{case.method} {case.path} wrote rows and answered an error"


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_keeps_its_schema_under_generated_input(
    redis_client: Any, auth: dict[str, str], loopback_only: list[str], mode: GenerationMode
) -> None:
    # given the schema the API serves
    from api.app import create_app

    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    # when each operation gets a few generated requests, with an admin token
    for operation in operations:
        # then each answer keeps to the schema, errors are problem+json and write nothing
        check = settings(
            max_examples=5,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )(given(case=operation.as_strategy(generation_mode=mode))(_fuzz))
        try:
            check(auth=auth)
        except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
            assert mode == GenerationMode.NEGATIVE
    # and no call tried to reach beyond this machine
    assert loopback_only == []
